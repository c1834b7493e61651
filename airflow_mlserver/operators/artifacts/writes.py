"""Writes that never leave a destination half-written, one strategy per kind of store.

``rename`` (local file systems): the file is written under a temporary name beside its place, its size checked,
and renamed into it. ``commit`` (S3, GCS, Azure Blob, ...: an upload becomes visible only once complete): an
unfinished upload is aborted; the size is not read back, since the store checks each upload request's length
itself (one request less per object). ``direct`` (any other store): the written size is read back and checked,
and the object deleted on failure. In every mode the bytes read are checked against the size the server
announced, and a SHA-256 of the content is computed while it streams, in fixed-size chunks through
:class:`ChunkBuffers` (reused from one artifact to the next) so that memory stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow_mlserver.client.words import plural
from airflow_mlserver.exceptions import ArtifactSizeMismatchError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: How a store is written so that a destination is complete or untouched (see the module's docstring).
WriteMode = Literal["rename", "commit", "direct"]

#: Bytes moved per read/write call.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Upload part size on object stores (S3's smallest multipart part is 5 MiB): the buffer each transfer keeps.
UPLOAD_BLOCK_SIZE = 5 * 1024 * 1024

#: Stores on which an upload becomes visible only once it completes, and can be aborted before that.
_COMMIT_ON_CLOSE = frozenset({"s3", "s3a", "s3n", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "oss"})
#: Local file systems: a rename is a cheap, atomic move there.
LOCAL_PROTOCOLS = frozenset({"file", "local"})


def write_mode(protocol: str | None) -> WriteMode:
    """The write strategy for a store's protocol (``None``: a local path)."""
    protocol = protocol or "file"
    if protocol in LOCAL_PROTOCOLS:
        return "rename"
    if protocol in _COMMIT_ON_CLOSE:
        return "commit"
    return "direct"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _discard(f: Any) -> None:
    """Abandon a file opened for writing without committing it (aborts a multipart upload)."""
    with contextlib.suppress(Exception):
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()
            with contextlib.suppress(Exception):
                f.closed = True  # fsspec files: close() after discard() would try to commit
            return
    with contextlib.suppress(Exception):
        f.close()


def _remove(fs: AbstractFileSystem, path: str) -> None:
    """Delete ``path`` if it is there; a failure to delete must not hide the error that led here."""
    with contextlib.suppress(Exception):
        fs.rm_file(path)


#: Hashing runs beside the copy (hashlib releases the GIL on large buffers), overlapping reads and writes.
_HASHERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlserver-artifacts-sha256")
#: Chunks smaller than this are hashed in place: a hand-off to a helper thread would cost more.
_HASH_ASIDE_BYTES = 65536


class ChunkBuffers:
    """The two ``size``-byte buffers a copy reads into, kept by a transfer thread for all its artifacts.

    Allocating (and zeroing) two fresh chunk-sized buffers for each artifact costs about as much as hashing
    a 1 MiB file, so a thread allocates them once.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.views = (memoryview(bytearray(size)), memoryview(bytearray(size)))


def _copy_into(f: Any, source: IO[bytes], buffers: ChunkBuffers, announced: int | None) -> tuple[int, str]:
    """Copy ``source`` into ``f`` in chunks; answer (bytes, sha256).

    Two buffers alternate: while one chunk is hashed (in a helper thread) and written, the next is read into
    the other buffer, so hashing costs no wall time on a large file. The last chunk (by the announced size),
    which has no next read to overlap, is hashed in place.
    """
    digest = hashlib.sha256()
    total = 0
    pending: Future[None] | None = None
    turn = 0
    try:
        while True:
            view = buffers.views[turn]
            n = source.readinto(view)  # type: ignore[attr-defined]
            if pending is not None:
                pending.result()  # the other buffer's hash is done: it may be reused next round
                pending = None
            if not n:
                break
            data = view[:n]
            total += n
            last = announced is not None and total >= announced
            if n >= _HASH_ASIDE_BYTES and not last:
                pending = _HASHERS.submit(digest.update, data)
            else:
                digest.update(data)
            f.write(data)
            turn ^= 1
    finally:
        if pending is not None:
            pending.result()
    return total, digest.hexdigest()


def _write_local(
    parent: str,
    temp: str,
    path: str,
    source: IO[bytes],
    buffers: ChunkBuffers,
    announced: int | None,
    check: Callable[[int, int | None], None],
) -> tuple[int, str]:
    """The ``rename`` write on this machine's disk through ``os`` (fsspec's wrappers cost as much as a 1 MiB copy).

    The size written is read from the open file once flushed.
    """
    os.makedirs(parent or ".", exist_ok=True)
    try:
        with open(temp, "wb") as f:
            written, digest = _copy_into(f, source, buffers, announced)
            f.flush()
            check(written, os.fstat(f.fileno()).st_size)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return written, digest


def write_stream(
    fs: AbstractFileSystem,
    mode: WriteMode,
    path: str,
    source: IO[bytes],
    buffers: ChunkBuffers,
    announced: int | None,
) -> tuple[int, str]:
    """Stream ``source`` to ``path`` so that ``path`` is either complete or untouched; (bytes, sha256)."""

    def check(written: int, stored: int | None) -> None:
        if announced is not None and written != announced:
            raise ArtifactSizeMismatchError(
                f"Read {plural(written, 'byte')} of an artifact the server announced as "
                f"{plural(announced, 'byte')}; the copy was dropped. Run the task again."
            )
        if stored is not None and stored != written:
            raise ArtifactSizeMismatchError(
                f"The destination holds {plural(stored, 'byte')} after {plural(written, 'byte')} were written; the "
                "copy was deleted. Check the store (quota, permissions) and run the task again."
            )

    if mode == "rename":
        parent = _parent(path)
        temp = f"{parent}/.{path.rsplit('/', 1)[-1][:180]}.{uuid.uuid4().hex[:12]}.part"
        if getattr(fs, "local_file", False):  # fsspec's local file system: its paths are this machine's
            return _write_local(parent, temp, path, source, buffers, announced, check)
        fs.makedirs(parent, exist_ok=True)
        try:
            with fs.open(temp, "wb") as f:
                written, digest = _copy_into(f, source, buffers, announced)
            check(written, fs.size(temp))
            fs.mv(temp, path)
        except BaseException:
            _remove(fs, temp)
            raise
        return written, digest
    f = fs.open(path, "wb", block_size=UPLOAD_BLOCK_SIZE)
    try:
        written, digest = _copy_into(f, source, buffers, announced)
        check(written, None)
    except BaseException:
        _discard(f)
        if mode == "direct":
            _remove(fs, path)
        raise
    try:
        f.close()
        if mode == "direct":  # a commit store checked each upload's length: no request to read it back
            check(written, fs.size(path))
    except BaseException:
        _remove(fs, path)
        raise
    return written, digest


def write_bytes(fs: AbstractFileSystem, mode: WriteMode, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as :func:`write_stream` does: complete or untouched."""
    buffers = ChunkBuffers(max(4096, min(len(data), DEFAULT_CHUNK_SIZE)))
    write_stream(fs, mode, path, io.BytesIO(data), buffers, len(data))
