"""What the batch view shows for one task instance, gathered on the API server.

Two sources: what Airflow keeps of the task instance (its crash-safe state in the task-state store, its XComs,
its rendered template fields; :func:`read_airflow_records`), then the Machine Learning Server itself, read
through the hook with the connection the task used (:func:`build_view`). The browser never talks to the server:
it sees neither a token nor a password.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.errors import MLServerError
from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.operators.artifacts.manifest import ArtifactEntry
from airflow_mlserver.operators.batch.state import STATE_KEY, BatchState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_mlserver.hooks.mlserver import MLServerHook

#: Failed records listed, at most (the results are streamed until this many failures are found).
MAX_FAILURES = 20
#: Results read at most while looking for failed records, per execution.
MAX_RESULTS_SCANNED = 200_000
#: Manifest lines listed, at most, and the largest manifest file read.
MAX_MANIFEST_LINES = 50
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
DEFAULT_CONN_ID = "mlserver_default"


@dataclass(frozen=True)
class TaskInstanceRef:
    """Which task instance: as the UI names it in the view's URL."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


@dataclass(frozen=True)
class AirflowRecords:
    """What Airflow keeps of a task instance that the view needs.

    :param state: The batch operator's crash-safe state (task-state store), if it stored one.
    :param summary: The task's return value (XCom), once it finished.
    :param execution_ids: The execution ids pushed before deferring (XCom ``execution_ids``).
    :param rendered: The rendered template fields (service, conn ids, paths).
    :param run_summaries: Return values of the other tasks of the run, by task id (for artifact manifests).
    """

    state: BatchState | None
    summary: dict[str, Any] | None
    execution_ids: list[str]
    rendered: dict[str, Any]
    run_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkView:
    """One batch execution of the task: a chunk of its records, or a part of a round that rescores failed ones.

    :param number: The chunk's number (1-based), or the part's within its rescore round.
    :param round: 0 for a chunk, n for the n-th rescore round.
    :param records: The record numbers a rescore part carries, in its order (None: a chunk's run of records
        from ``first_record`` on).
    """

    number: int
    execution_id: str
    state: str
    total: int
    completed: int
    failed: int | None
    first_record: int
    finished: bool
    error: str | None = None
    round: int = 0
    records: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        return f"chunk {self.number}" if self.round == 0 else f"rescore {self.round}, part {self.number}"

    def record_number(self, index: int) -> int:
        """The input record number of the execution's ``index``-th record."""
        if self.records is not None:
            return self.records[index] if index < len(self.records) else index
        return self.first_record + index

    @property
    def percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 100.0

    @property
    def failed_percent(self) -> float:
        return 100.0 * (self.failed or 0) / self.total if self.total else 0.0


@dataclass(frozen=True)
class FailedRecord:
    """A failed record: its number in the task's input (0-based, as in the results file) and its error."""

    record: int
    chunk: int
    message: str
    where: str = ""


@dataclass(frozen=True)
class ManifestView:
    """An artifacts manifest: where it is, its counts and its first lines."""

    task_id: str
    uri: str
    counts: dict[str, int]
    lines: list[ArtifactEntry]
    more: int = 0
    problem: str | None = None
    destination: str = ""

    def relative(self, entry: ArtifactEntry) -> str:
        """Where an artifact went, below the copy's destination."""
        where = entry.destination or ""
        root = self.destination.rstrip("/") + "/"
        return where[len(root) :] if self.destination and where.startswith(root) else where


@dataclass
class BatchView:
    """Everything the page shows; :attr:`problems` says what could not be read, in words."""

    ref: TaskInstanceRef
    kind: str = "none"
    service: str | None = None
    version: str | None = None
    conn_id: str = DEFAULT_CONN_ID
    chunks: list[ChunkView] = field(default_factory=list)
    chunks_expected: int | None = None
    started: float | None = None
    duration: float | None = None
    output_uri: str | None = None
    failures: list[FailedRecord] = field(default_factory=list)
    manifests: list[ManifestView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def latest(self) -> list[ChunkView]:
        """The executions that hold each failed record's latest outcome: the last round's (every record that
        failed before was sent again there), or the chunks while no record has been rescored."""
        last = max((c.round for c in self.chunks), default=0)
        return [c for c in self.chunks if c.round == last]

    @property
    def rescored(self) -> bool:
        return any(c.round for c in self.chunks)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.chunks if c.round == 0)

    @property
    def completed(self) -> int:
        return sum(c.completed for c in self.chunks if c.round == 0)

    @property
    def failed(self) -> int:
        """Records whose latest attempt failed."""
        return sum(c.failed or 0 for c in self.latest)

    @property
    def finished(self) -> bool:
        """Every chunk started and none still running (unknown states count as running)."""
        chunks = sum(1 for c in self.chunks if c.round == 0)
        started_all = self.chunks_expected is None or chunks >= self.chunks_expected
        return bool(self.chunks) and started_all and all(c.finished for c in self.chunks)

    @property
    def percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else (100.0 if self.finished else 0.0)

    @property
    def failed_percent(self) -> float:
        return 100.0 * self.failed / self.total if self.total else 0.0

    @property
    def elapsed(self) -> float | None:
        if self.duration is not None:
            return self.duration
        return time.time() - self.started if self.started is not None else None

    @property
    def rate(self) -> float | None:
        """Records per second since the batch started."""
        elapsed = self.elapsed
        return self.completed / elapsed if elapsed and elapsed > 0 and self.completed else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None when finished or not measurable yet)."""
        rate = self.rate
        if self.finished or not rate:
            return None
        return max(0.0, (self.total - self.completed) / rate)

    def to_json(self) -> dict[str, Any]:
        """The view as JSON (the ``/mlserver/api/batch/...`` route): plain values only, no secret."""
        return {
            "dag_id": self.ref.dag_id,
            "run_id": self.ref.run_id,
            "task_id": self.ref.task_id,
            "map_index": self.ref.map_index,
            "kind": self.kind,
            "service": self.service,
            "version": self.version,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "finished": self.finished,
            "rate": self.rate,
            "eta_seconds": self.eta,
            "output_uri": self.output_uri,
            "chunks": [
                {
                    "chunk": c.number,
                    "round": c.round,
                    "execution_id": c.execution_id,
                    "state": c.state,
                    "total": c.total,
                    "completed": c.completed,
                    "failed": c.failed,
                    "error": c.error,
                }
                for c in self.chunks
            ],
            "failures": [
                {"record": f.record, "chunk": f.chunk, "where": f.where, "message": f.message}
                for f in self.failures
            ],
            "manifests": [
                {"task_id": m.task_id, "uri": m.uri, "counts": m.counts, "problem": m.problem}
                for m in self.manifests
            ],
            "problems": self.problems,
        }


def read_airflow_records(ref: TaskInstanceRef, session: Session) -> AirflowRecords:
    """Read the task instance's state, XComs and rendered fields from Airflow's metadata database."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    stored = session.scalar(
        select(TaskStateStoreModel.value).where(
            TaskStateStoreModel.dag_id == ref.dag_id,
            TaskStateStoreModel.run_id == ref.run_id,
            TaskStateStoreModel.task_id == ref.task_id,
            TaskStateStoreModel.map_index == ref.map_index,
            TaskStateStoreModel.key == STATE_KEY,
        )
    )
    state = None
    if stored:
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            value = json.loads(stored)
            state = BatchState.from_stored(value) if isinstance(value, dict) and value else None

    xcoms: dict[tuple[str, int, str], Any] = {}
    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == ref.dag_id,
            XComModel.run_id == ref.run_id,
            XComModel.key.in_(("return_value", "execution_ids")),
        )
    )
    for row in rows:
        with contextlib.suppress(Exception):  # a value another task wrote that does not decode: not ours
            xcoms[(row.task_id, row.map_index, row.key)] = XComModel.deserialize_value(row)
    own = (ref.task_id, ref.map_index)
    summary = xcoms.get((*own, "return_value"))
    ids = xcoms.get((*own, "execution_ids"))
    rendered = session.scalar(
        select(RenderedTaskInstanceFields.rendered_fields).where(
            RenderedTaskInstanceFields.dag_id == ref.dag_id,
            RenderedTaskInstanceFields.run_id == ref.run_id,
            RenderedTaskInstanceFields.task_id == ref.task_id,
            RenderedTaskInstanceFields.map_index == ref.map_index,
        )
    )
    return AirflowRecords(
        state=state,
        summary=summary if isinstance(summary, dict) else None,
        execution_ids=[str(i) for i in ids] if isinstance(ids, list) else [],
        rendered=rendered if isinstance(rendered, dict) else {},
        run_summaries={
            task_id: value
            for (task_id, map_index, key), value in xcoms.items()
            if key == "return_value" and isinstance(value, dict) and (task_id, map_index) != own
        },
    )


def build_view(
    ref: TaskInstanceRef, records: AirflowRecords, hook_for: Callable[[str], MLServerHook]
) -> BatchView:
    """Put Airflow's records and the server's answers together; ``hook_for`` gives a hook by connection id."""
    rendered, summary, state = records.rendered, records.summary or {}, records.state
    view = BatchView(ref=ref, conn_id=str(rendered.get("mlserver_conn_id") or DEFAULT_CONN_ID))
    view.service = _text(summary.get("service_name")) or (state.service if state else None)
    view.version = _text(summary.get("service_version")) or (state.version if state else None)
    view.service = view.service or _text(rendered.get("service_name"))
    view.version = view.version or _text(rendered.get("service_version"))
    ids = state.execution_ids() if state else list(records.execution_ids)
    if not ids and isinstance(summary.get("execution_ids"), list):
        ids = [str(i) for i in summary["execution_ids"]]
    if not ids and _text(summary.get("execution_id") or rendered.get("execution_id")):
        ids = [str(summary.get("execution_id") or rendered.get("execution_id"))]  # artifacts or sensor task
    if "manifest" in summary:
        view.kind = "artifacts"
    elif state is not None or "output_uri" in summary:
        view.kind = "batch"
    elif ids:
        view.kind = "execution"
    if not ids:
        return view
    if state is not None:
        view.started, view.chunks_expected = state.started, len(state.chunks.parts)
    if isinstance(summary.get("duration_seconds"), int | float):
        view.duration = float(summary["duration_seconds"])
    view.output_uri = _text(summary.get("output_uri")) or _text(rendered.get("output_path"))
    if not view.service or not view.version:
        view.problems.append("The task has not resolved its service yet: nothing to ask the server.")
        return view
    hook = hook_for(view.conn_id)
    try:
        _read_chunks(view, hook, _parts(state, ids))
        _read_failures(view, hook)
    except MLServerError as exc:
        view.problems.append(f"Could not read the executions through connection '{view.conn_id}': {exc}")
    finally:
        hook.close()
    _read_manifests(view, records, set(ids))
    return view


@dataclass(frozen=True)
class _Part:
    """An execution to show: its round, its number there, and (for a rescore) the records it carries."""

    execution_id: str
    round: int
    number: int
    records: tuple[int, ...] | None = None


def _parts(state: BatchState | None, ids: list[str]) -> list[_Part]:
    """The executions in the order of their rounds: chunks first, then each rescore round's parts."""
    if state is None:
        return [_Part(execution_id, 0, n) for n, execution_id in enumerate(ids, start=1)]
    parts = []
    for number, rnd in enumerate(state.rounds):
        for part, stored in enumerate(rnd.parts):
            if stored.execution_id is not None:
                records = None if number == 0 else tuple(stored.numbers())
                parts.append(_Part(stored.execution_id, number, part + 1, records))
    return parts


def _read_chunks(view: BatchView, hook: MLServerHook, parts: list[_Part]) -> None:
    first = 0
    for part in parts:
        status: BatchStatus = hook.get_batch(view.service or "", view.version or "", part.execution_id)
        view.chunks.append(
            ChunkView(
                number=part.number,
                execution_id=part.execution_id,
                state=status.state,
                total=status.total,
                completed=status.completed,
                failed=status.failed,
                first_record=first,
                finished=status.is_finished,
                error=status.error_message,
                round=part.round,
                records=part.records,
            )
        )
        if part.round == 0:
            first += status.total


def _read_failures(view: BatchView, hook: MLServerHook) -> None:
    """The first records whose latest attempt failed: only executions of the latest round that report failures
    are read."""
    for chunk in view.latest:
        if not chunk.failed or len(view.failures) >= MAX_FAILURES:
            continue
        results = hook.iter_batch_results(view.service or "", view.version or "", chunk.execution_id)
        try:
            for scanned, result in enumerate(results):
                if scanned >= MAX_RESULTS_SCANNED or len(view.failures) >= MAX_FAILURES:
                    break
                if not result.success:
                    message = (result.error_message or "failed").strip()
                    record = chunk.record_number(result.index)
                    view.failures.append(FailedRecord(record, chunk.number, message[:500], chunk.label))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()


def _read_manifests(view: BatchView, records: AirflowRecords, ids: set[str]) -> None:
    """This task's manifest (an artifacts task), or those of the run's artifact tasks that copied these executions."""
    candidates: list[tuple[str, dict[str, Any]]] = []
    if view.kind == "artifacts" and records.summary:
        candidates.append((view.ref.task_id, records.summary))
    for task_id, summary in sorted(records.run_summaries.items()):
        copied = summary.get("execution_ids")
        named = {str(summary.get("execution_id"))} | (
            {str(i) for i in copied} if isinstance(copied, list) else set()
        )
        if "manifest" in summary and ids & named:
            candidates.append((task_id, summary))
    for task_id, summary in candidates:
        uri = _text(summary.get("manifest"))
        if uri:
            conn_id = _text(records.rendered.get("dest_conn_id")) if task_id == view.ref.task_id else None
            view.manifests.append(read_manifest(task_id, uri, conn_id))


def read_manifest(task_id: str, uri: str, conn_id: str | None) -> ManifestView:
    """Read a manifest written by the artifacts operator; a problem in words instead of an exception."""
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            return ManifestView(task_id, uri, {}, [], problem="The manifest is too large to show here.")
        data = json.loads(raw)
        items = data.get("artifacts", []) if isinstance(data, dict) else []
        counts = data.get("counts", {}) if isinstance(data, dict) else {}
        lines = []
        for item in items[:MAX_MANIFEST_LINES]:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                lines.append(ArtifactEntry.from_json(item))
        return ManifestView(
            task_id,
            uri,
            {str(k): int(v) for k, v in counts.items() if isinstance(v, int)},
            lines,
            more=max(0, len(items) - MAX_MANIFEST_LINES),
            destination=str(data.get("destination") or ""),
        )
    except Exception as exc:  # any store, any failure: the page says so and shows the rest
        return ManifestView(
            task_id, uri, {}, [], problem=f"Could not read the manifest ({type(exc).__name__})."
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
