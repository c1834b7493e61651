"""The batch operator's crash-safe state: the executions it started, kept in Airflow's task-state store.

The store survives retries and worker crashes (XCom does not) and its scope is the task instance (DAG, run,
task, map index), never the try number: a retry, or a deferred task that resumes, finds here what an earlier
try started. The stored form is a JSON-like dict under the key ``mlserver_batch``, its times ISO-8601 in UTC
(people read them in the UI and in the store's REST API)::

    {"service": "TxService", "version": "1.0", "chunks": 3,
     "executions": {"0": "<execution id>", "1": "..."},
     "executions_started": {"0": "2026-11-30T12:00:00.000+00:00", "1": "..."},
     "started": "2026-11-30T12:00:00.000+00:00", "deadline": "2026-11-30T13:00:00.000+00:00",
     "intent": {"round": 0, "part": 2, "records": 7, "before": ["<execution id>", "..."],
                "at": "2026-11-30T12:00:05.000+00:00"}}

``deadline`` is None for no timeout. ``intent`` is the start being sent, written before it is sent and
cleared when its execution id is stored (None in between starts): a try that finds one does not know whether
the server started that execution, and reconciles (see :class:`StartIntent`). Earlier versions of this
provider stored ``started`` and ``deadline`` as Unix timestamps (floats) and no ``executions_started`` nor
``intent``: those forms are still read, so a retry of a task an older version started reattaches. In memory
every time is a Unix timestamp, as ``time.time()`` gives.
"""

from __future__ import annotations

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

    :param round: 0 for the chunks.
    :param part: The chunk number (0-based).
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
class BatchState:
    """One batch of a task instance: the service, how many chunks, and the execution started for each.

    :param executions: Execution id by chunk number (0-based), for the chunks started so far.
    :param started: When the first try started the batch (Unix timestamp).
    :param deadline: When the batch times out (Unix timestamp), None for never.
    :param executions_started: When each chunk's execution was started (Unix timestamp), so that a pending
        one can say how long it has waited; missing for chunks an older version started.
    :param intent: The start being sent, if any (see :class:`StartIntent`).
    """

    service: str
    version: str
    chunks: int
    started: float
    deadline: float | None
    executions: dict[int, str] = field(default_factory=dict)
    executions_started: dict[int, float] = field(default_factory=dict)
    intent: StartIntent | None = None

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
            intent=None if intent is None else StartIntent.from_stored(intent),
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
            "intent": None if self.intent is None else self.intent.to_stored(),
        }

    def chunk_started(self, index: int) -> float:
        """When chunk ``index``'s execution was started; the batch's start where that was not stored."""
        return self.executions_started.get(index, self.started)

    def stored_executions(self) -> dict[str, str]:
        """The executions as stored: chunk numbers as text (the store keeps JSON objects)."""
        return {str(k): v for k, v in self.executions.items()}

    def execution_ids(self) -> list[str]:
        """The execution ids in chunk order."""
        return [self.executions[k] for k in sorted(self.executions)]


def _iso(timestamp: float) -> str:
    """A Unix timestamp as ISO-8601 text in UTC, to the millisecond: ``2026-11-30T12:00:00.000+00:00``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _timestamp(value: Any) -> float:
    """A stored time as a Unix timestamp: ISO-8601 text (a zone-less one is UTC), or an older version's number."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return float(value)
