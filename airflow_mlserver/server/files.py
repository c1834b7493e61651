"""A record's artifacts on disk: regular files right inside its folder, reached without following any link.

Service code writes a record's folder, and a service (or something it left running) may put a symbolic
link there, a fifo, a folder, or swap the record's folder itself for a link. The files routes must serve
none of these: each step below the data directory is opened with ``O_NOFOLLOW``, relative to the one before
(``dir_fd``), so what is checked is what is read, and a file is served only if it is a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_NO_LINK = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: O_NONBLOCK: opening a fifo must not wait for a writer (it is then refused as not a regular file).
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NO_LINK
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NO_LINK


def _open_folder(root: Path, folder: Path) -> int | None:
    """A descriptor of ``folder``, each step of it below ``root`` a real folder (not a link); else None."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        for part in folder.relative_to(root).parts:
            below = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = below
    except OSError:
        os.close(fd)
        return None
    return fd


def regular_files(root: Path, folder: Path) -> list[str]:
    """The names of the regular files right inside ``folder`` (sorted; none if it is no real folder below ``root``)."""
    fd = _open_folder(root, folder)
    if fd is None:
        return []
    try:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
    finally:
        os.close(fd)


def open_regular_file(root: Path, path: Path) -> tuple[BinaryIO, int] | None:
    """``path`` opened for reading, with its size, if it is a regular file reached without a link from ``root``."""
    folder = _open_folder(root, path.parent)
    if folder is None:
        return None
    try:
        fd = os.open(path.name, _FILE_FLAGS, dir_fd=folder)
    except OSError:  # a link (ELOOP), a socket or a device that will not open, or nothing there
        return None
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size
