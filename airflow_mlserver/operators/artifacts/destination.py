"""Where the artifacts operator writes: ``dest`` read as a store path, its URIs, and what is there already.

Credentials of a destination come only from its Airflow connection: a URI that carries a password is refused
where the task is written (even in the text of a template), so that it never reaches the serialized DAG.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from airflow_mlserver.exceptions import OperatorArgumentError
from airflow_mlserver.operators.arguments import uri
from airflow_mlserver.operators.artifacts.names import static_prefix
from airflow_mlserver.operators.artifacts.writes import LOCAL_PROTOCOLS, WriteMode, write_mode

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


#: What ``dest`` must be, for the messages that refuse one.
DEST_WHAT = (
    "an ObjectStoragePath or a URI such as 's3://bucket/prefix' or 'file:///data/out', with the store's "
    "credentials in an Airflow connection (dest_conn_id), never in the URI"
)


def credentials_check(name: str, dest: Any) -> Any:
    """Refuse credentials in ``dest``, even in the text of a template, so they never reach the serialized DAG."""
    uri(DEST_WHAT)(name, dest)
    if isinstance(dest, ObjectStoragePath) and ":" in (dest.conn_id or ""):
        raise OperatorArgumentError(
            name,
            f"{dest.protocol}://***@{dest.path}",
            "give the path without credentials, and the store's "
            "Airflow connection (with them) as dest_conn_id",
        )
    return dest


def dest_check(name: str, dest: Any) -> Any:
    """``dest``: an ObjectStoragePath, or a URI with a scheme (an absolute path for ``file://``), no credentials."""
    credentials_check(name, dest)
    if isinstance(dest, str):
        scheme, sep, rest = dest.strip().partition("://")
        if not sep or not scheme:
            raise OperatorArgumentError(
                name, dest, f"give {DEST_WHAT} (a local folder as 'file:///absolute/path')"
            )
        if scheme in LOCAL_PROTOCOLS and not rest.startswith("/") and "@" not in rest.split("/", 1)[0]:
            raise OperatorArgumentError(
                name, dest, "give a local folder as an absolute path: 'file:///absolute/path'"
            )
    elif not isinstance(dest, ObjectStoragePath):
        raise OperatorArgumentError(name, dest, f"give {DEST_WHAT}")
    return dest


def destination_path(dest: str | ObjectStoragePath, conn_id: str | None) -> ObjectStoragePath:
    """``dest`` (checked by :func:`dest_check`) as an ObjectStoragePath using ``conn_id``."""
    if isinstance(dest, ObjectStoragePath):
        if conn_id and dest.conn_id != conn_id:
            return ObjectStoragePath(f"{dest.protocol or 'file'}://{dest.path}", conn_id=conn_id)
        return dest
    text = dest.strip()
    return ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def destination_uri(path: ObjectStoragePath) -> str:
    """``protocol://path`` of a destination, without the connection id (for manifests and logs)."""
    protocol = path.protocol or "file"
    location = path.path
    if protocol in LOCAL_PROTOCOLS and not location.startswith("/"):
        location = "/" + location
    return f"{protocol}://{location}"


@dataclass(frozen=True)
class Destination:
    """An open destination: its store's file system, the root folder in it, and how to write there."""

    path: ObjectStoragePath
    fs: AbstractFileSystem
    root: str
    mode: WriteMode
    protocol: str

    @classmethod
    def open(cls, dest: Any, conn_id: str | None) -> Destination:
        """Read ``dest`` (see :func:`destination_path`) and open its store."""
        path = destination_path(dest, conn_id)
        protocol = path.protocol or "file"
        return cls(path, path.fs, path.path.rstrip("/"), write_mode(protocol), protocol)

    @property
    def uri(self) -> str:
        return destination_uri(self.path)

    def uri_of(self, path: str) -> str:
        """The URI of ``path``, a path in this destination's store (for manifests and logs).

        Spelled as :func:`destination_uri` spells a path's, without building one (it runs once per artifact).
        """
        if self.protocol in LOCAL_PROTOCOLS and not path.startswith("/"):
            path = "/" + path
        return f"{self.protocol}://{path}"

    def existing_sizes(self, template: str, field_sets: list[dict[str, Any]]) -> dict[str, int]:
        """Sizes of the files already below the common folders of ``template`` (one listing per folder).

        ``field_sets`` hold, per execution, the values that are the same for all its artifacts.
        """
        folders = {static_prefix(template, fields) for fields in field_sets}
        sizes: dict[str, int] = {}
        for folder in sorted(folders):
            base = f"{self.root}/{folder}" if folder else self.root
            with contextlib.suppress(Exception):
                self.fs.invalidate_cache(base)
            try:
                found = self.fs.find(base, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for path, info in found.items():
                if info.get("type", "file") == "file" and info.get("size") is not None:
                    sizes[self._strip(path)] = int(info["size"])
        return sizes

    def _strip(self, path: str) -> str:
        try:
            return str(self.fs._strip_protocol(path)).rstrip("/")
        except Exception:
            return path.rstrip("/")
