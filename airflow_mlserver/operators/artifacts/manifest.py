"""The artifacts operator's manifest: one line per artifact (copied, skipped, refused or failed), and the summary.

The manifest is a JSON file written next to the artifacts, after them: the executions (each chunk with its
first record and its record count, each rescore execution with the records it carried), then one line per
artifact with its record number in the task (as in the results file), its execution and its index there. A
rerun reads the previous one to carry the SHA-256 of the artifacts it skips (already there with the announced
size) over to the new one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_mlserver.operators.artifacts.writes import WriteMode, write_bytes

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_mlserver.operators.artifacts.records import Executions

STATUS_COPIED = "copied"
STATUS_SKIPPED = "skipped"
STATUS_REFUSED = "refused"
STATUS_FAILED = "failed"
STATUSES = (STATUS_COPIED, STATUS_SKIPPED, STATUS_REFUSED, STATUS_FAILED)


@dataclass
class ArtifactEntry:
    """One artifact's line in the manifest.

    :param record: The record's number in the task (as in the results file), across executions.
    :param index: The record's index in its execution.
    :param execution_id: Its execution (None in manifests written before several executions were copied).
    """

    record: int
    index: int
    file_name: str
    status: str
    execution_id: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    destination: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "record": self.record,
            "execution_id": self.execution_id,
            "index": self.index,
            "file_name": self.file_name,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "destination": self.destination,
            "status": self.status,
        }
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> ArtifactEntry:
        """An entry as :meth:`to_json` wrote it (an older one has no record: its index is its record number).

        KeyError, TypeError or ValueError when it is not one.
        """
        size, digest, execution_id = item.get("bytes"), item.get("sha256"), item.get("execution_id")
        return cls(
            record=int(item.get("record", item["index"])),
            execution_id=execution_id if isinstance(execution_id, str) else None,
            index=int(item["index"]),
            file_name=str(item["file_name"]),
            status=str(item["status"]),
            bytes=size if isinstance(size, int) else None,
            sha256=digest if isinstance(digest, str) else None,
            destination=item.get("destination"),
            error=item.get("error"),
        )


def read_previous(fs: AbstractFileSystem, path: str) -> dict[str, ArtifactEntry]:
    """The previous run's entries that were copied or skipped, by destination URI; empty if there is none.

    By destination, whatever the path template: a skipped artifact carries over the SHA-256 of the file that
    the destination holds, whichever execution wrote it.
    """
    try:
        with fs.open(path, "rb") as f:
            data = json.loads(f.read())
    except (FileNotFoundError, ValueError, OSError):
        return {}
    out: dict[str, ArtifactEntry] = {}
    for item in data.get("artifacts", []) if isinstance(data, dict) else []:
        if isinstance(item, dict) and item.get("status") in (STATUS_COPIED, STATUS_SKIPPED):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                entry = ArtifactEntry.from_json(item)
                if isinstance(entry.destination, str):
                    out[entry.destination] = entry
    return out


@dataclass
class Manifest:
    """What one run of the operator did, as the manifest file and as the task's summary (its XCom).

    :param executions: The executions copied from, numbered (their status when the copy started).
    :param records: The records asked for (numbers in the task); ``all_records`` when no ``indexes`` were given.
    :param records_without_artifacts: Those of them that produced no artifact.
    :param uri: Where the manifest itself is written.
    """

    service_name: str
    service_version: str
    executions: Executions
    destination: str
    path_template: str
    records: list[int]
    all_records: bool
    records_without_artifacts: list[int]
    entries: list[ArtifactEntry]
    uri: str

    def counts(self) -> dict[str, int]:
        """Artifacts by status, every status present."""
        return {s: sum(1 for e in self.entries if e.status == s) for s in STATUSES}

    def bytes_copied(self) -> int:
        return sum(e.bytes or 0 for e in self.entries if e.status == STATUS_COPIED)

    def bytes_total(self) -> int:
        """Bytes of the artifacts now at the destination: copied by this run or already there."""
        return sum(e.bytes or 0 for e in self.entries if e.status in (STATUS_COPIED, STATUS_SKIPPED))

    def summary(self) -> dict[str, Any]:
        """The task's return value: counts, bytes and where the manifest is (a few hundred bytes, plus the ids).

        ``execution_ids`` are the chunks' (as the batch operator's), ``execution_id`` the first of them (the only
        one, for one execution); ``rescored_records`` how many records' artifacts came from a rescore round;
        ``state`` the state the executions share, or each state with its count.
        """
        return {
            "execution_id": self.executions.ids[0],
            "execution_ids": self.executions.ids,
            "rescored_records": self.executions.rescored,
            "state": self.executions.state,
            "finished": self.executions.finished,
            "records": len(self.records),
            "records_without_artifacts": len(self.records_without_artifacts),
            "records_without_artifacts_first": self.records_without_artifacts[:20],
            "artifacts": len(self.entries),
            **self.counts(),
            "bytes_copied": self.bytes_copied(),
            "bytes_total": self.bytes_total(),
            "destination": self.destination,
            "manifest": self.uri,
        }

    def to_json(self) -> dict[str, Any]:
        total = self.executions.total
        return {
            "service_name": self.service_name,
            "service_version": self.service_version,
            "execution_id": self.executions.ids[0],
            "execution_ids": self.executions.ids,
            "execution_state": self.executions.state,
            "execution_finished": self.executions.finished,
            "executions": self.executions.to_json(),
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "destination": self.destination,
            "path_template": self.path_template,
            "records": self.records if not self.all_records else {"from": 0, "to": total - 1},
            "records_without_artifacts": self.records_without_artifacts,
            "counts": self.counts(),
            "bytes_total": self.bytes_total(),
            "artifacts": [e.to_json() for e in self.entries],
        }

    def write(self, fs: AbstractFileSystem, mode: WriteMode, path: str) -> None:
        """Write the manifest to ``path`` (complete or not at all, as every artifact)."""
        write_bytes(fs, mode, path, json.dumps(self.to_json(), indent=1).encode())
