"""The batch operator's crash-safe state: the executions it started, kept in Airflow's task-state store.

The store survives retries and worker crashes (XCom does not) and its scope is the task instance (DAG, run,
task, map index), never the try number: a retry, or a deferred task that resumes, finds here what an earlier
try started. The stored form is a JSON-like dict under the key ``mlserver_batch``, its times ISO-8601 in UTC
(people read them in the UI and in the store's REST API). Every round has one shape: its parts, each with the
record numbers it carries (ranges of 0-based record numbers of the whole input) and, once started, its execution
and when it was started::

    {"service": "TxService", "version": "1.0",
     "started": "2026-11-30T12:00:00.000+00:00", "deadline": "2026-11-30T13:00:00.000+00:00",
     "rounds": [
       {"parts": [{"records": "0-49999", "execution_id": "<id>", "started": "2026-11-30T12:00:00.000+00:00"},
                  {"records": "50000-99999", "execution_id": null, "started": null}]},
       {"parts": [{"records": "3,5,10-12", "execution_id": "<id>", "started": "..."}]}],
     "intent": {"round": 1, "part": 0, "records": 5, "before": [], "at": "2026-11-30T12:05:00.000+00:00",
                "key": "<the start's idempotency key>"},
     "written": "0-1"}

Round 0 are the chunks of the input; each later round sends again the records that failed in the one before.
``deadline`` is None for no timeout. ``intent`` is the start being sent, written before it is sent and cleared
when its execution id is stored (None in between starts): a try that finds one does not know whether the server
started that execution, and reconciles (see :class:`StartIntent`). ``written`` are the chunks whose result rows
are already staged next to the output (as ranges; see :mod:`~airflow_mlserver.operators.batch.parts`).

Earlier releases stored round 0 at the top (``chunks``, ``executions``, ``executions_started``), the rescore
rounds in ``rescores``, and before that Unix timestamps (floats) and none of ``executions_started``,
``rescores``, ``intent`` or ``written``. Those forms are still read (:func:`BatchState.from_stored`), so a retry
of a task an older release started reattaches; they did not store which records a chunk carries, so such a
state's chunks say so (:attr:`Part.records` empty) until :meth:`BatchState.number_chunks` fills them in from
the input's chunking. In memory every time is a Unix timestamp, as ``time.time()`` gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from airflow_mlserver.executions.timing import Seen

STATE_KEY = "mlserver_batch"


class StateStore(Protocol):
    """Where the state is kept: Airflow's ``task_state_store`` of the task instance (or a test's stand-in)."""

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def set(self, key: str, value: Any, /, *, retention: timedelta | None = None) -> None: ...


@dataclass
class StartIntent:
    """A start about to be sent, stored before it is sent: whether the server acted on it is unknown until
    its execution id is stored.

    A try that finds an intent reconciles against the server: the service's executions that are new since
    ``before`` (and not already this batch's) and carry ``records`` records are the candidates.

    :param round: 0 for the chunks, n for the n-th round of rescoring.
    :param part: The chunk number, or the part of the rescore round (0-based).
    :param records: How many records the execution carries.
    :param before: The service's execution ids just before the start (none where the server honours keys).
    :param at: When the start was about to be sent (Unix timestamp).
    :param key: The start's idempotency key (None in an intent an earlier release stored).
    """

    round: int
    part: int
    records: int
    before: list[str]
    at: float
    key: str | None = None

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> StartIntent:
        return cls(
            round=int(value["round"]),
            part=int(value["part"]),
            records=int(value["records"]),
            before=[str(e) for e in value["before"]],
            at=_timestamp(value["at"]),
            key=None if value.get("key") is None else str(value["key"]),
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "part": self.part,
            "records": self.records,
            "before": list(self.before),
            "at": _iso(self.at),
            "key": self.key,
        }


@dataclass
class Part:
    """One execution of a round: the records it carries and, once started, the execution.

    :param records: Its record numbers (0-based, of the whole input) as ranges, ``"3,5,10-12"``; its record
        ``i`` is the ``i``-th of them. Empty only for a chunk an older release stored, until numbered.
    :param execution_id: The execution started for it, None until started.
    :param started: When that execution was started (Unix timestamp), None where unknown.
    :param seen: When a poll first saw that execution running and finished (see
        :mod:`~airflow_mlserver.executions.timing`); stored under ``running`` and ``ended``.
    """

    records: str
    execution_id: str | None = None
    started: float | None = None
    seen: Seen = field(default_factory=Seen)

    def numbers(self) -> Sequence[int]:
        """The record numbers it carries, in the order its execution numbers them."""
        return numbers(self.records)

    @property
    def size(self) -> int:
        return len(self.numbers())

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> Part:
        started, execution_id = value.get("started"), value.get("execution_id")
        return cls(
            records=str(value.get("records") or ""),
            execution_id=None if execution_id is None else str(execution_id),
            started=None if started is None else _timestamp(started),
            seen=Seen(*(_timestamp(value[k]) if value.get(k) else None for k in ("running", "ended"))),
        )

    def to_stored(self) -> dict[str, Any]:
        stored = {
            "records": self.records,
            "execution_id": self.execution_id,
            "started": None if self.started is None else _iso(self.started),
        }
        stored.update({k: _iso(v) for k, v in self.seen.to_payload().items()})
        return stored


@dataclass
class Round:
    """A round of executions: round 0 the chunks of the input, round n the n-th rescore of failed records."""

    parts: list[Part]

    @property
    def executions(self) -> dict[int, str]:
        """Execution id by part number, for the parts started so far."""
        return {i: p.execution_id for i, p in enumerate(self.parts) if p.execution_id is not None}

    @classmethod
    def of(cls, records: Iterable[Sequence[int]]) -> Round:
        """A round not started yet, its parts carrying ``records`` (each ascending)."""
        return cls([Part(ranges(r)) for r in records])

    @classmethod
    def chunks(cls, sizes: Iterable[int]) -> Round:
        """Round 0, not started yet: the chunks of the input, of these sizes, in input order."""
        first, records = 0, []
        for size in sizes:
            records.append(range(first, first + size))
            first += size
        return cls.of(records)

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> Round:
        return cls([Part.from_stored(p) for p in value["parts"]])

    def to_stored(self) -> dict[str, Any]:
        return {"parts": [p.to_stored() for p in self.parts]}


@dataclass
class BatchState:
    """One batch of a task instance: the service, its rounds of executions, the deadline and what is staged.

    :param started: When the first try started the batch (Unix timestamp).
    :param deadline: When the batch times out (Unix timestamp), None for never.
    :param rounds: The rounds so far: the chunks, then each rescore round.
    :param intent: The start being sent, if any (see :class:`StartIntent`).
    :param written: The chunks whose result rows are staged (their part files written), ascending.
    """

    service: str
    version: str
    started: float
    deadline: float | None
    rounds: list[Round] = field(default_factory=list)
    intent: StartIntent | None = None
    written: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, store: StateStore | None) -> BatchState | None:
        """The state the task instance stored, or None when it stored none (or there is no store)."""
        value = store.get(STATE_KEY) if store is not None else None
        return cls.from_stored(value) if isinstance(value, dict) and value else None

    def save(self, store: StateStore | None) -> None:
        """Store the state, never expiring; a no-op where the task has no store."""
        if store is None:
            return
        from airflow.sdk.execution_time.context import NEVER_EXPIRE

        store.set(STATE_KEY, self.to_stored(), retention=NEVER_EXPIRE)

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> BatchState:
        """Read the stored form: this release's, or any earlier release's (see the module's docstring)."""
        deadline, intent = value.get("deadline"), value.get("intent")
        rounds = value.get("rounds")
        return cls(
            service=value["service"],
            version=value["version"],
            started=_timestamp(value["started"]),
            deadline=None if deadline is None else _timestamp(deadline),
            rounds=[Round.from_stored(r) for r in rounds] if rounds is not None else _earlier_rounds(value),
            intent=None if intent is None else StartIntent.from_stored(intent),
            written=list(numbers(str(value.get("written", "")))),
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "started": _iso(self.started),
            "deadline": None if self.deadline is None else _iso(self.deadline),
            "rounds": [r.to_stored() for r in self.rounds],
            "intent": None if self.intent is None else self.intent.to_stored(),
            "written": ranges(self.written),
        }

    @property
    def chunks(self) -> Round:
        """Round 0: the chunks of the input."""
        return self.rounds[0]

    @property
    def rescore_rounds(self) -> int:
        """How many rounds of rescoring were planned."""
        return len(self.rounds) - 1

    @property
    def unnumbered(self) -> bool:
        """Whether some chunk does not say which records it carries (a state an older release stored)."""
        return any(not p.records for p in self.chunks.parts)

    def number_chunks(self, sizes: Sequence[int]) -> bool:
        """Give the chunks an older release stored their record numbers, from the input's chunk ``sizes``;
        answer whether any was missing."""
        missing = self.unnumbered
        if missing and len(sizes) == len(self.chunks.parts):
            first = 0
            for part, size in zip(self.chunks.parts, sizes, strict=True):
                part.records, first = ranges(range(first, first + size)), first + size
        return missing

    def note_seen(self, seen: Mapping[str, Seen]) -> None:
        """Keep what polls saw of the executions' times (a step's, a wait's, the trigger's) in their parts;
        stored with the next save."""
        for rnd in self.rounds:
            for part in rnd.parts:
                if part.execution_id is not None and part.execution_id in seen:
                    part.seen.merge(seen[part.execution_id])

    def execution_ids(self) -> list[str]:
        """Every execution of the batch: the chunks' in chunk order, then each rescore round's."""
        return [p.execution_id for r in self.rounds for p in r.parts if p.execution_id is not None]

    def chunk_execution_ids(self) -> list[str]:
        """The chunks' execution ids, in chunk order."""
        return [p.execution_id for p in self.chunks.parts if p.execution_id is not None]


def _earlier_rounds(value: dict[str, Any]) -> list[Round]:
    """The rounds of an earlier release's form: chunks at the top, rescore rounds in ``rescores``."""
    started = {int(k): _timestamp(v) for k, v in value.get("executions_started", {}).items()}
    executions = {int(k): str(v) for k, v in value["executions"].items()}
    chunks = Round([Part("", executions.get(i), started.get(i)) for i in range(int(value["chunks"]))])
    rounds = [chunks]
    for rescore in value.get("rescores", []):
        ids = {int(k): str(v) for k, v in rescore["executions"].items()}
        times = {int(k): _timestamp(v) for k, v in rescore["executions_started"].items()}
        rounds.append(
            Round([Part(str(r), ids.get(i), times.get(i)) for i, r in enumerate(rescore["records"])])
        )
    return rounds


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


def numbers(ranges_: str) -> Sequence[int]:
    """The record numbers of :func:`ranges`' text, in order (one run is a ``range``: no list of a chunk's
    numbers is ever built)."""
    items = [item for item in ranges_.split(",") if item]
    if len(items) == 1:
        first, _, last = items[0].partition("-")
        return range(int(first), int(last or first) + 1)
    out: list[int] = []
    for item in items:
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
