"""The HTTP side of the artifacts operator: listing records' artifacts and copying each one into its store.

A :class:`Transfers` runs in the operator's thread pool: each thread gets its own hook (a hook holds one
``requests`` session and one token) and its own two chunk buffers, and each artifact streams from the server
into the store in chunks (:func:`~airflow_mlserver.operators.artifacts.writes.write_stream`), with a broken
transfer started over.
"""

from __future__ import annotations

import contextlib
import threading
from typing import IO, TYPE_CHECKING

from airflow_mlserver.exceptions import ArtifactSizeMismatchError, MLServerConnectionError
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.artifacts.manifest import (
    STATUS_COPIED,
    STATUS_FAILED,
    STATUS_SKIPPED,
    ArtifactEntry,
)
from airflow_mlserver.operators.artifacts.plan import Listing, Planned, WarningLog, already_there
from airflow_mlserver.operators.artifacts.writes import ChunkBuffers, write_stream

if TYPE_CHECKING:
    from airflow_mlserver.operators.artifacts.destination import Destination
    from airflow_mlserver.operators.artifacts.records import Executions


def _content_length(reader: IO[bytes]) -> int | None:
    """The artifact's size as the server announced it (``Content-Length``), when the answer says it."""
    size = getattr(reader, "size", None)
    return size if isinstance(size, int) else None


class Transfers:
    """Listings and copies for one run of the operator, from any thread of its pool.

    :param conn_id: The Machine Learning Server connection.
    :param chunk_size: Bytes moved per read and write.
    :param retries: Further attempts of a transfer that broke off.
    :param log: Where a broken or failed transfer is told.
    """

    def __init__(
        self, conn_id: str, name: str, version: str, chunk_size: int, retries: int, log: WarningLog
    ) -> None:
        self.conn_id, self.name, self.version = conn_id, name, version
        self.chunk_size, self.retries, self.log = chunk_size, retries, log
        self._hooks: list[MLServerHook] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def hook(self) -> MLServerHook:
        """This thread's hook."""
        hook: MLServerHook | None = getattr(self._local, "hook", None)
        if hook is None:
            hook = MLServerHook(self.conn_id)
            self._local.hook = hook
            with self._lock:
                self._hooks.append(hook)
        return hook

    def buffers(self) -> ChunkBuffers:
        """This thread's chunk buffers, reused by each of its copies."""
        buffers: ChunkBuffers | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = ChunkBuffers(self.chunk_size)
        return buffers

    def close(self) -> None:
        """Close every thread's hook (and let go of the buffers)."""
        with self._lock:
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            with contextlib.suppress(Exception):
                hook.close()
        self._local = threading.local()

    def listing(self, executions: Executions, record: int) -> Listing:
        """The artifact names of record ``record`` (a number in the task)."""
        execution_id, index = executions.locate(record)
        files = list(self.hook().list_artifacts(self.name, self.version, execution_id, index))
        return Listing(record, execution_id, index, files)

    def copy(
        self,
        dest: Destination,
        item: Planned,
        existing_size: int | None,
        previous: dict[str, ArtifactEntry],
    ) -> ArtifactEntry:
        """Copy one artifact (skipped when its destination holds it: :func:`~.plan.already_there`), retrying a
        broken transfer."""
        uri = dest.uri_of(item.path)
        entry = ArtifactEntry(
            item.record, item.index, item.file_name, STATUS_FAILED, item.execution_id, destination=uri
        )
        for attempt in range(self.retries + 1):
            try:
                with self.hook().open_artifact(
                    self.name, self.version, item.execution_id, item.index, item.file_name
                ) as source:
                    announced = _content_length(source)
                    skip = already_there(existing_size, announced, previous.get(uri))
                    if skip is not None:
                        entry.status, entry.bytes, entry.sha256 = STATUS_SKIPPED, skip.bytes, skip.sha256
                        return entry
                    written, digest = write_stream(
                        dest.fs, dest.mode, item.path, source, self.buffers(), announced
                    )
                entry.status, entry.bytes, entry.sha256, entry.error = STATUS_COPIED, written, digest, None
                return entry
            except (MLServerConnectionError, ArtifactSizeMismatchError, OSError) as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                if attempt < self.retries:
                    self.log.warning(
                        "Copying record %d '%s' broke off (%s); starting over (attempt %d of %d)",
                        item.record, item.file_name, exc, attempt + 2, self.retries + 1,
                    )  # fmt: skip
                    continue
            except Exception as exc:
                entry.error = f"{type(exc).__name__}: {exc}"
                break
        self.log.error(
            "Could not copy record %d '%s' to %s: %s", item.record, item.file_name, uri, entry.error
        )
        return entry
