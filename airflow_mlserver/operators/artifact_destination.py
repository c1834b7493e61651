"""Where the artifacts operator writes: ``dest`` read as a store path, its URIs, and what is there already.

Credentials of a destination come only from its Airflow connection: a URI that carries a password is refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from airflow_mlserver.exceptions import ArtifactsConfigError
from airflow_mlserver.operators.artifact_names import static_prefix
from airflow_mlserver.operators.artifact_writes import LOCAL_PROTOCOLS, WriteMode, write_mode

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


def destination_path(dest: Any, conn_id: str | None) -> ObjectStoragePath:
    """``dest`` as an ObjectStoragePath using ``conn_id``; refuses credentials given in the URI itself."""
    if isinstance(dest, ObjectStoragePath):
        if conn_id and dest.conn_id != conn_id:
            return ObjectStoragePath(f"{dest.protocol or 'file'}://{dest.path}", conn_id=conn_id)
        return dest
    if not isinstance(dest, str) or not dest.strip():
        raise ArtifactsConfigError(
            f"dest must be an ObjectStoragePath or a URI such as 's3://bucket/prefix' or 'file:///data', "
            f"not {dest!r}."
        )
    text = dest.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ArtifactsConfigError(
            f"dest {text!r} has no scheme: write it as a URI, e.g. 'file://{text}' or 's3://bucket/prefix'."
        )
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        raise ArtifactsConfigError(
            f"dest '{scheme}://***@{rest.split('@', 1)[1]}' carries credentials in the URI. Credentials come "
            "from an Airflow connection only: put them in one and pass dest_conn_id."
        )
    if scheme in LOCAL_PROTOCOLS and not rest.startswith("/") and "@" not in rest.split("/", 1)[0]:
        raise ArtifactsConfigError(f"dest {text!r} is not an absolute path: write 'file:///absolute/path'.")
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

    @classmethod
    def open(cls, dest: Any, conn_id: str | None) -> Destination:
        """Read ``dest`` (see :func:`destination_path`) and open its store."""
        path = destination_path(dest, conn_id)
        return cls(path, path.fs, path.path.rstrip("/"), write_mode(path.protocol))

    @property
    def uri(self) -> str:
        return destination_uri(self.path)

    def uri_of(self, path: str) -> str:
        """The URI of ``path``, a path in this destination's store (for manifests and logs)."""
        return destination_uri(ObjectStoragePath(f"{self.path.protocol or 'file'}://{path}"))

    def existing_sizes(self, template: str, fields: dict[str, Any]) -> dict[str, int]:
        """Sizes of the files already below the destination's common folder, in one listing."""
        prefix = static_prefix(template, fields)
        base = f"{self.root}/{prefix}" if prefix else self.root
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        sizes: dict[str, int] = {}
        for path, info in found.items():
            if info.get("type", "file") == "file" and info.get("size") is not None:
                sizes[self._strip(path)] = int(info["size"])
        return sizes

    def _strip(self, path: str) -> str:
        try:
            return str(self.fs._strip_protocol(path)).rstrip("/")
        except Exception:
            return path.rstrip("/")
