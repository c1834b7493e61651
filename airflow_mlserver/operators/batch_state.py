"""The batch operator's crash-safe state: the executions it started, kept in Airflow's task-state store.

The store survives retries and worker crashes (XCom does not) and its scope is the task instance (DAG, run,
task, map index), never the try number: a retry, or a deferred task that resumes, finds here what an earlier
try started. The stored form is a JSON-like dict under the key ``mlserver_batch``, its times ISO-8601 in UTC
(people read them in the UI and in the store's REST API)::

    {"service": "TxService", "version": "1.0", "chunks": 3,
     "executions": {"0": "<execution id>", "1": "..."},
     "executions_started": {"0": "2026-11-30T12:00:00.000+00:00", "1": "..."},
     "started": "2026-11-30T12:00:00.000+00:00", "deadline": "2026-11-30T13:00:00.000+00:00",
     "rescores": [{"records": ["3,5,10-12"], "executions": {"0": "<execution id>"},
                   "executions_started": {"0": "2026-11-30T12:05:00.000+00:00"}}],
     "intent": {"round": 1, "part": 0, "records": 5, "before": ["<execution id>", "..."],
                "at": "2026-11-30T12:05:00.000+00:00"},
     "written": "0-1"}

``deadline`` is None for no timeout. The chunks are round 0; each entry of ``rescores`` is one round of
rescoring failed records (round 1, 2, ...): the record numbers each of its executions ("parts") carries, as
ranges of 0-based record numbers of the whole input, and the executions started. ``intent`` is the start being
sent, written before it is sent and cleared when its execution id is stored (None in between starts): a try
that finds one does not know whether the server started that execution, and reconciles (see
:class:`StartIntent`). ``written`` are the chunks whose result rows are already staged next to the output (as
ranges; see :mod:`~airflow_mlserver.operators.batch_parts`). Earlier versions of this provider stored
``started`` and ``deadline`` as Unix timestamps (floats) and no ``executions_started``, ``rescores``, ``intent``
nor ``written``: those forms are still read, so a retry of a task an older version started reattaches. In
memory every time is a Unix timestamp, as ``time.time()`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

STATE_KEY = "mlserver_batch"


@dataclass
class StartIntent:
    """A start about to be sent, stored before it is sent: whether the server acted on it is unknown until
    its execution id is stored.

    A try that finds an intent reconciles against the server: the service's executions that are new since
    ``before`` (and not already this batch's) and carry ``records`` records are the candidates.

    :param round: 0 for the chunks, n for the n-th round of rescoring.
    :param part: The chunk number, or the part of the rescore round (0-based).
    :param records: How many records the execution carries.
    :param before: The service's execution ids just before the start.
    :param at: When the start was about to be sent (Unix timestamp).
    """

    round: int
    part: int
    records: int
    before: list[str]
    at: float

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> StartIntent:
        return cls(
            round=int(value["round"]),
            part=int(value["part"]),
            records=int(value["records"]),
            before=[str(e) for e in value["before"]],
            at=_timestamp(value["at"]),
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "part": self.part,
            "records": self.records,
            "before": list(self.before),
            "at": _iso(self.at),
        }


@dataclass
class RescoreRound:
    """One round of rescoring: the records each of its executions (its parts) carries, and those started.

    :param records: The record numbers of each part (0-based, of the whole input) as ranges: ``"3,5,10-12"``.
    :param executions: Execution id by part (0-based), for the parts started so far.
    :param executions_started: When each part's execution was started (Unix timestamp).
    """

    records: list[str]
    executions: dict[int, str] = field(default_factory=dict)
    executions_started: dict[int, float] = field(default_factory=dict)

    def part_records(self, part: int) -> list[int]:
        """The record numbers part ``part`` carries, in the order its execution numbers them."""
        return numbers(self.records[part])

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> RescoreRound:
        return cls(
            records=[str(r) for r in value["records"]],
            executions={int(k): str(v) for k, v in value["executions"].items()},
            executions_started={int(k): _timestamp(v) for k, v in value["executions_started"].items()},
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "records": list(self.records),
            "executions": {str(k): v for k, v in self.executions.items()},
            "executions_started": {str(k): _iso(v) for k, v in self.executions_started.items()},
        }


@dataclass(frozen=True)
class Round:
    """One round as the operator drives it: 0 the chunks, n the n-th rescore round (its dicts the state's own).

    :param number: The round's number.
    :param parts: How many executions the round has (chunks, or parts of the rescore round).
    :param executions: Execution id by part, for the parts started so far.
    :param executions_started: When each part's execution was started (Unix timestamp).
    """

    number: int
    parts: int
    executions: dict[int, str]
    executions_started: dict[int, float]


@dataclass
class BatchState:
    """One batch of a task instance: the service, how many chunks, and the execution started for each.

    :param executions: Execution id by chunk number (0-based), for the chunks started so far.
    :param started: When the first try started the batch (Unix timestamp).
    :param deadline: When the batch times out (Unix timestamp), None for never.
    :param executions_started: When each chunk's execution was started (Unix timestamp), so that a pending
        one can say how long it has waited; missing for chunks an older version started.
    :param rescores: The rounds of rescoring failed records, in order (round 1 first).
    :param intent: The start being sent, if any (see :class:`StartIntent`).
    :param written: The chunks whose result rows are staged (their part files written), ascending.
    """

    service: str
    version: str
    chunks: int
    started: float
    deadline: float | None
    executions: dict[int, str] = field(default_factory=dict)
    executions_started: dict[int, float] = field(default_factory=dict)
    rescores: list[RescoreRound] = field(default_factory=list)
    intent: StartIntent | None = None
    written: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, context: Context) -> BatchState | None:
        """The state the task instance stored, or None when it stored none (or the store is unavailable)."""
        store = context.get("task_state_store")
        value = store.get(STATE_KEY) if store is not None else None
        return cls.from_stored(value) if isinstance(value, dict) and value else None

    def save(self, context: Context) -> None:
        """Store the state, never expiring; a no-op where the task has no store."""
        store = context.get("task_state_store")
        if store is None:
            return
        from airflow.sdk.execution_time.context import NEVER_EXPIRE

        store.set(STATE_KEY, self.to_stored(), retention=NEVER_EXPIRE)

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> BatchState:
        """Read the stored form, ISO-8601 times or an older version's Unix timestamps."""
        deadline, intent = value.get("deadline"), value.get("intent")
        return cls(
            service=value["service"],
            version=value["version"],
            chunks=int(value["chunks"]),
            started=_timestamp(value["started"]),
            deadline=None if deadline is None else _timestamp(deadline),
            executions={int(k): str(v) for k, v in value["executions"].items()},
            executions_started={
                int(k): _timestamp(v) for k, v in value.get("executions_started", {}).items()
            },
            rescores=[RescoreRound.from_stored(r) for r in value.get("rescores", [])],
            intent=None if intent is None else StartIntent.from_stored(intent),
            written=numbers(str(value.get("written", ""))),
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "chunks": self.chunks,
            "executions": self.stored_executions(),
            "executions_started": {str(k): _iso(v) for k, v in self.executions_started.items()},
            "started": _iso(self.started),
            "deadline": None if self.deadline is None else _iso(self.deadline),
            "rescores": [r.to_stored() for r in self.rescores],
            "intent": None if self.intent is None else self.intent.to_stored(),
            "written": ranges(self.written),
        }

    def round(self, number: int) -> Round:
        """Round ``number``: 0 the chunks, n the n-th rescore round."""
        if number == 0:
            return Round(0, self.chunks, self.executions, self.executions_started)
        rescore = self.rescores[number - 1]
        return Round(number, len(rescore.records), rescore.executions, rescore.executions_started)

    def current_round(self) -> Round:
        """The last round: the chunks until a rescore round is planned, then that round."""
        return self.round(len(self.rescores))

    def rounds(self) -> list[Round]:
        """Every round so far: the chunks, then each rescore round."""
        return [self.round(n) for n in range(len(self.rescores) + 1)]

    def all_execution_ids(self) -> list[str]:
        """Every execution of the batch: the chunks' in chunk order, then each rescore round's."""
        return [r.executions[k] for r in self.rounds() for k in sorted(r.executions)]

    def chunk_started(self, index: int) -> float:
        """When chunk ``index``'s execution was started; the batch's start where that was not stored."""
        return self.executions_started.get(index, self.started)

    def stored_executions(self) -> dict[str, str]:
        """The executions as stored: chunk numbers as text (the store keeps JSON objects)."""
        return {str(k): v for k, v in self.executions.items()}

    def execution_ids(self) -> list[str]:
        """The execution ids in chunk order."""
        return [self.executions[k] for k in sorted(self.executions)]


def ranges(numbers_: Sequence[int]) -> str:
    """Ascending record numbers as ranges: ``[3, 5, 10, 11, 12]`` is ``"3,5,10-12"``."""
    if isinstance(numbers_, range) and numbers_.step == 1 and len(numbers_) > 1:
        return f"{numbers_.start}-{numbers_.stop - 1}"
    runs: list[list[int]] = []
    for number in numbers_:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def numbers(ranges_: str) -> list[int]:
    """The record numbers of :func:`ranges`' text, in order."""
    out: list[int] = []
    for item in filter(None, ranges_.split(",")):
        first, _, last = item.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def _iso(timestamp: float) -> str:
    """A Unix timestamp as ISO-8601 text in UTC, to the millisecond: ``2026-11-30T12:00:00.000+00:00``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _timestamp(value: Any) -> float:
    """A stored time as a Unix timestamp: ISO-8601 text (a zone-less one is UTC), or an older version's number."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return float(value)
