"""What the batch view shows for one task instance, gathered on the API server.

Two sources: what Airflow keeps of the task instance (:mod:`~airflow_mlserver.ui.airflow_records`: its kind,
its state, its crash-safe batch state, XComs and rendered fields), then the Machine Learning Server itself, read
through the hook with the connection the task used (:func:`build_view`). The browser never talks to the server:
it sees neither a token nor a password.

Times: the server's answers carry none. An execution's start is what the operator stored when it started it;
when it left Pending and when it finished are the first polls that saw it (the operator's and its trigger's,
stored with the state, and this API server's own reads): late by up to a poll interval, so shown as "about".
Where a time cannot be known the view says so rather than guess (a rate "at least", a dash).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.executions.timing import Seen
from airflow_mlserver.ui import observed
from airflow_mlserver.ui.airflow_records import (
    OPERATOR_KINDS,
    AirflowRecords,
    TaskInstanceFound,
    TaskInstanceRef,
    TaskKind,
    read_airflow_records,
)
from airflow_mlserver.ui.manifests import MAX_MANIFEST_BYTES, ManifestView, read_manifest
from airflow_mlserver.ui.timing import Estimate, ExecutionTimes, TaskTimes

if TYPE_CHECKING:
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.artifacts.manifest import ArtifactEntry
    from airflow_mlserver.operators.batch.state import BatchState

__all__ = [
    "MAX_MANIFEST_BYTES",
    "BatchView",
    "ChunkView",
    "TaskInstanceRef",
    "build_view",
    "read_airflow_records",
    "read_manifest",
]

#: Failed records listed, at most (the results are streamed until this many failures are found).
MAX_FAILURES = 20
#: Results read at most while looking for failed records, per execution.
MAX_RESULTS_SCANNED = 200_000
DEFAULT_CONN_ID = "mlserver_default"


@dataclass(frozen=True)
class ChunkView:
    """One batch execution of the task: a chunk of its records, or a part of a round that rescores failed ones.

    :param number: The chunk's number (1-based), or the part's within its rescore round.
    :param round: 0 for a chunk, n for the n-th rescore round.
    :param records: The record numbers a rescore part carries, in its order (None: a chunk's run of records
        from ``first_record`` on).
    :param times: When it was started, seen running and seen finished.
    """

    number: int
    execution_id: str
    state: str
    total: int
    completed: int
    failed: int | None
    first_record: int
    finished: bool
    times: ExecutionTimes
    error: str | None = None
    round: int = 0
    records: tuple[int, ...] | None = None
    parts: int = 1

    @property
    def label(self) -> str:
        if self.round == 0:
            return f"chunk {self.number}"
        return f"rescore {self.round}" + (f", part {self.number}" if self.parts > 1 else "")

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

    @property
    def rate(self) -> Estimate | None:
        return self.times.rate(self.completed)

    @property
    def eta(self) -> Estimate | None:
        return self.times.eta(self.completed, self.total)


@dataclass(frozen=True)
class FailedRecord:
    """A failed record: its number in the task's input (0-based, as in the results file) and its error."""

    record: int
    chunk: int
    message: str
    where: str = ""


@dataclass
class BatchView:
    """Everything the page shows; :attr:`problems` says what could not be read, in words.

    :param task: The task instance as Airflow keeps it (None: not looked up, in tests of the view alone).
    :param kind: This provider's kind of task, from its operator class (or what it stored).
    :param now: When the view was read (Unix timestamp); every "so far" is up to it.
    """

    ref: TaskInstanceRef
    task: TaskInstanceFound | None = None
    kind: TaskKind = TaskKind.OTHER
    now: float = field(default_factory=time.time)
    service: str | None = None
    version: str | None = None
    conn_id: str = DEFAULT_CONN_ID
    chunks: list[ChunkView] = field(default_factory=list)
    chunks_expected: int | None = None
    records_expected: int | None = None
    started: float | None = None
    output_uri: str | None = None
    failures: list[FailedRecord] = field(default_factory=list)
    manifests: list[ManifestView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    rendered: dict[str, Any] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.kind is not TaskKind.OTHER

    @property
    def live(self) -> bool:
        """The task instance runs or waits on its trigger: the page refreshes itself."""
        return self.task.live if self.task is not None else not self.finished

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
    def chunk_count(self) -> int:
        return sum(1 for c in self.chunks if c.round == 0)

    @property
    def rescore_count(self) -> int:
        return sum(1 for c in self.chunks if c.round)

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
        started_all = self.chunks_expected is None or self.chunk_count >= self.chunks_expected
        return bool(self.chunks) and started_all and all(c.finished for c in self.chunks)

    @property
    def percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else (100.0 if self.finished else 0.0)

    @property
    def failed_percent(self) -> float:
        return 100.0 * self.failed / self.total if self.total else 0.0

    @property
    def times(self) -> TaskTimes:
        chunks = [c for c in self.chunks if c.round == 0]
        return TaskTimes(
            self.started, [c.times for c in self.chunks], [c.completed for c in chunks], self.now
        )

    @property
    def elapsed(self) -> Estimate | None:
        """The batch's time: from its first start to the last execution's end, or so far."""
        return self.times.elapsed(self.finished)

    @property
    def rate(self) -> Estimate | None:
        """Records per second while executions ran."""
        return self.times.rate(self.completed)

    @property
    def eta(self) -> Estimate | None:
        """Time left at that rate: only while executions run and records are left."""
        if self.finished or not any(c.times.running_now for c in self.chunks):
            return None
        expected = self.records_expected if self.records_expected is not None else self.total
        return self.times.eta(expected - self.completed)

    def record_of(self, entry: ArtifactEntry) -> int:
        """An artifact's record, numbered as in this task's results (an artifacts task's own numbering may run
        across the executions of several tasks, or of every map index)."""
        if self.kind is not TaskKind.ARTIFACTS:
            for chunk in self.chunks:
                if chunk.execution_id == entry.execution_id:
                    return chunk.record_number(entry.index)
        return entry.record

    def to_json(self) -> dict[str, Any]:
        """The view as JSON (the ``/mlserver/api/batch/...`` route): plain values only, no secret."""
        return {
            "dag_id": self.ref.dag_id,
            "run_id": self.ref.run_id,
            "task_id": self.ref.task_id,
            "map_index": self.ref.map_index,
            "kind": self.kind.value,
            "task_state": self.task.state if self.task else None,
            "operator": self.task.operator if self.task else None,
            "live": self.live,
            "service": self.service,
            "version": self.version,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "finished": self.finished,
            "elapsed": _json(self.elapsed),
            "rate": _json(self.rate),
            "eta": _json(self.eta),
            "output_uri": self.output_uri,
            "chunks": [_chunk_json(c) for c in self.chunks],
            "failures": [
                {"record": f.record, "chunk": f.chunk, "where": f.where, "message": f.message}
                for f in self.failures
            ],
            "manifests": [
                {
                    "task_id": m.task_id,
                    "map_index": m.map_index,
                    "uri": m.uri,
                    "counts": m.counts,
                    "problem": m.problem,
                    "shown": m.shown,
                    "page": m.page,
                    "pages": m.pages,
                    "records": sorted({self.record_of(e) for e in m.lines}),
                }
                for m in self.manifests
            ],
            "problems": self.problems,
        }


def _json(estimate: Estimate | None) -> dict[str, Any] | None:
    """A time (seconds) or a rate (records per second), and how sure it is: ``""``, about, at least, at most."""
    return None if estimate is None else {"value": estimate.value, "qualifier": estimate.qualifier}


def _chunk_json(c: ChunkView) -> dict[str, Any]:
    return {
        "chunk": c.number,
        "round": c.round,
        "label": c.label,
        "execution_id": c.execution_id,
        "state": c.state,
        "total": c.total,
        "completed": c.completed,
        "failed": c.failed,
        "error": c.error,
        "pending": _json(c.times.pending()),
        "running": _json(c.times.running()),
        "took": _json(c.times.took()),
        "rate": _json(c.rate),
        "eta": _json(c.eta),
    }


def build_view(
    ref: TaskInstanceRef,
    task: TaskInstanceFound | None,
    records: AirflowRecords,
    hook_for: Callable[[str], MLServerHook],
    *,
    page: int = 1,
    now: float | None = None,
) -> BatchView:
    """Put Airflow's records and the server's answers together; ``hook_for`` gives a hook by connection id;
    ``page`` is the page of the artifacts lists."""
    rendered, summary, state = records.rendered, records.summary or {}, records.state
    view = BatchView(ref=ref, task=task, conn_id=str(rendered.get("mlserver_conn_id") or DEFAULT_CONN_ID))
    view.summary, view.rendered = dict(summary), dict(rendered)
    if now is not None:
        view.now = now
    view.kind = _kind(task, records)
    if view.kind is TaskKind.DELETE and isinstance(records.returned, list):
        view.summary = {"deleted": [str(v) for v in records.returned]}
    if not view.kind.scores:
        return view  # another task's, or a service published or deleted: the page shows what Airflow keeps
    view.service = _text(summary.get("service_name")) or (state.service if state else None)
    view.version = _text(summary.get("service_version")) or (state.version if state else None)
    view.service = view.service or _text(rendered.get("service_name"))
    view.version = view.version or _text(rendered.get("service_version"))
    ids = _execution_ids(state, records, summary, rendered)
    if not ids:
        return view
    if state is not None:
        view.started, view.chunks_expected = state.started, len(state.chunks.parts)
        view.records_expected = sum(p.size for p in state.chunks.parts) or None
    view.output_uri = _text(summary.get("output_uri")) or _text(rendered.get("output_path"))
    if not view.service or not view.version:
        view.problems.append("The task has not resolved its service yet: nothing to ask the server.")
        return view
    _read_server(view, hook_for, _parts(state, ids))
    _read_manifests(view, records, set(ids), page)
    return view


def _kind(task: TaskInstanceFound | None, records: AirflowRecords) -> TaskKind:
    """From the operator class Airflow stored; a user's subclass of the batch operator by its stored batch state
    (what another task returns says nothing: a plain task may return a "manifest" of its own)."""
    if task is not None and task.operator in OPERATOR_KINDS:
        return OPERATOR_KINDS[task.operator]
    if records.state is not None:
        return TaskKind.BATCH
    if task is not None:
        return TaskKind.OTHER
    summary = records.summary or {}  # no task instance to ask (a view built from records alone)
    if "manifest" in summary:
        return TaskKind.ARTIFACTS
    return (
        TaskKind.BATCH
        if "output_uri" in summary
        else TaskKind.SENSOR
        if records.execution_ids
        else TaskKind.OTHER
    )


def _execution_ids(
    state: BatchState | None, records: AirflowRecords, summary: dict[str, Any], rendered: dict[str, Any]
) -> list[str]:
    ids = state.execution_ids() if state else list(records.execution_ids)
    if not ids and isinstance(summary.get("execution_ids"), list):
        ids = [str(i) for i in summary["execution_ids"]]
    single = _text(summary.get("execution_id")) or _text(rendered.get("execution_id"))
    if not ids and single:
        ids = [single]  # an artifacts or sensor task
    return ids


def _read_server(view: BatchView, hook_for: Callable[[str], MLServerHook], parts: list[_Part]) -> None:
    """The executions' statuses and first failures; whatever fails is a problem in words, never an error."""
    try:
        hook = hook_for(view.conn_id)
    except Exception as exc:
        view.problems.append(f"Could not use connection '{view.conn_id}': {_cause(exc)}")
        return
    try:
        _read_chunks(view, hook, parts)
        _read_failures(view, hook)
    except Exception as exc:  # a connection missing or refused, a server down: said on the page
        view.problems.append(
            f"Could not read the executions through connection '{view.conn_id}': {_cause(exc)}"
        )
    finally:
        hook.close()


def _cause(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else quoted(text)


@dataclass(frozen=True)
class _Part:
    """An execution to show: its round, its number there, what the task stored of its times, and (for a
    rescore) the records it carries."""

    execution_id: str
    round: int
    number: int
    parts: int = 1
    records: tuple[int, ...] | None = None
    started: float | None = None
    seen: Seen = field(default_factory=Seen)


def _parts(state: BatchState | None, ids: list[str]) -> list[_Part]:
    """The executions in the order of their rounds: chunks first, then each rescore round's parts."""
    if state is None:
        return [_Part(execution_id, 0, n) for n, execution_id in enumerate(ids, start=1)]
    parts = []
    for number, rnd in enumerate(state.rounds):
        for index, stored in enumerate(rnd.parts):
            if stored.execution_id is not None:
                records = None if number == 0 else tuple(stored.numbers())
                seen = Seen(stored.seen.running, stored.seen.ended)
                parts.append(
                    _Part(
                        stored.execution_id, number, index + 1, len(rnd.parts), records, stored.started, seen
                    )
                )
    return parts


def _read_chunks(view: BatchView, hook: MLServerHook, parts: list[_Part]) -> None:
    first = 0
    statuses = [hook.get_batch(view.service or "", view.version or "", p.execution_id) for p in parts]
    seen_here = observed.remember(statuses, view.now)
    for part, status in zip(parts, statuses, strict=True):
        seen = Seen(part.seen.running, part.seen.ended)
        seen.merge(seen_here.get(status.execution_id, Seen()))
        view.chunks.append(
            _chunk(part, status, first, ExecutionTimes.of(status, part.started, seen, view.now))
        )
        if part.round == 0:
            first += status.total


def _chunk(part: _Part, status: BatchStatus, first: int, times: ExecutionTimes) -> ChunkView:
    return ChunkView(
        number=part.number,
        execution_id=part.execution_id,
        state=status.state,
        total=status.total,
        completed=status.completed,
        failed=status.failed,
        first_record=first,
        finished=status.is_finished,
        times=times,
        error=status.error_message,
        round=part.round,
        records=part.records,
        parts=part.parts,
    )


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


def _read_manifests(view: BatchView, records: AirflowRecords, ids: set[str], page: int) -> None:
    """This task instance's manifest (an artifacts task), or the lines of this task instance's executions in
    the manifests of the run's artifact tasks that copied any of them."""
    if view.kind is TaskKind.ARTIFACTS and records.summary:
        uri = _text(records.summary.get("manifest"))
        if uri:
            conn_id = _text(records.rendered.get("dest_conn_id"))
            view.manifests.append(
                read_manifest(view.ref.task_id, uri, conn_id, page=page, map_index=view.ref.map_index)
            )
        return
    for (task_id, map_index), summary in sorted(records.run_summaries.items()):
        copied = summary.get("execution_ids")
        named = {str(summary.get("execution_id"))} | (
            {str(i) for i in copied} if isinstance(copied, list) else set()
        )
        uri = _text(summary.get("manifest"))
        if uri and ids & named:
            view.manifests.append(
                read_manifest(task_id, uri, None, executions=ids, page=page, map_index=map_index)
            )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
