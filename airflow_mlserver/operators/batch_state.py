"""The batch operator's crash-safe state: the executions it started, kept in Airflow's task-state store.

The store survives retries and worker crashes (XCom does not) and its scope is the task instance (DAG, run,
task, map index), never the try number: a retry, or a deferred task that resumes, finds here what an earlier
try started. The stored form is a JSON-like dict under the key ``mlserver_batch``::

    {"service": "TxService", "version": "1.0", "chunks": 3,
     "executions": {"0": "<execution id>", "1": "..."}, "started": 1718000000.0, "deadline": 1718003600.0}

``started`` and ``deadline`` are Unix timestamps (``deadline`` None for no timeout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Context

STATE_KEY = "mlserver_batch"


@dataclass
class BatchState:
    """One batch of a task instance: the service, how many chunks, and the execution started for each.

    :param executions: Execution id by chunk number (0-based), for the chunks started so far.
    :param started: When the first try started the batch (Unix timestamp).
    :param deadline: When the batch times out (Unix timestamp), None for never.
    """

    service: str
    version: str
    chunks: int
    started: float
    deadline: float | None
    executions: dict[int, str] = field(default_factory=dict)

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
        return cls(
            service=value["service"],
            version=value["version"],
            chunks=int(value["chunks"]),
            started=float(value["started"]),
            deadline=value.get("deadline"),
            executions={int(k): str(v) for k, v in value["executions"].items()},
        )

    def to_stored(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "version": self.version,
            "chunks": self.chunks,
            "executions": self.stored_executions(),
            "started": self.started,
            "deadline": self.deadline,
        }

    def stored_executions(self) -> dict[str, str]:
        """The executions as stored: chunk numbers as text (the store keeps JSON objects)."""
        return {str(k): v for k, v in self.executions.items()}

    def execution_ids(self) -> list[str]:
        """The execution ids in chunk order."""
        return [self.executions[k] for k in sorted(self.executions)]
