"""The event a wait on batch executions ends with: one class, turned into the trigger event's payload (JSON,
stored by the triggerer) and read back from it only at the boundary.

Payloads keep the keys earlier releases wrote (``status``, ``message``, ``service_name``, ``service_version``,
``execution_ids``, ``executions``, and ``complete`` or ``execution_id`` where they apply; ``unreachable`` is
new, and only in an ``error`` event of an outage; so is ``seen``), so an event written before an upgrade still reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.executions.timing import Seen, seen_payload
from airflow_mlserver.executions.waiting import Outcome

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus


@dataclass(frozen=True)
class Counts:
    """One execution as the last poll saw it: its state as the server spelled it, and its record counts."""

    state: str
    total: int
    completed: int
    failed: int

    @classmethod
    def of(cls, status: BatchStatus) -> Counts:
        return cls(status.state, status.total, status.completed, status.failed or 0)


@dataclass(frozen=True)
class BatchEvent:
    """How a wait on the executions of one service ended.

    :param status: The outcome: complete (all, or the first with ``until="first"``), failed or canceled (one
        ended), timeout (the deadline passed), error (an execution or the service is unknown, or the credentials
        are refused, or the server could not be read for ``unreachable_timeout``).
    :param message: A sentence for the task's error or log.
    :param execution_ids: The executions the wait watched.
    :param executions: What the last poll saw of each, by execution id.
    :param complete: With ``complete``: the executions that are (all of them, or the first ones).
    :param execution_id: With ``failed`` or ``canceled``: the execution that ended.
    :param unreachable: With ``error``: the server could not be read for ``unreachable_timeout`` (a retry of the
        task may find it again), rather than an input the server refuses.
    :param seen: When the wait's polls first saw each execution running and finished, by execution id (key
        ``seen``, left out when empty).
    """

    status: Outcome
    message: str
    service_name: str
    service_version: str
    execution_ids: tuple[str, ...]
    executions: Mapping[str, Counts] = field(default_factory=dict)
    complete: tuple[str, ...] = ()
    execution_id: str | None = None
    unreachable: bool = False
    seen: Mapping[str, Seen] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        """The trigger event's payload: plain JSON values."""
        payload: dict[str, Any] = {
            "status": self.status.value,
            "message": self.message,
            "service_name": self.service_name,
            "service_version": self.service_version,
            "execution_ids": list(self.execution_ids),
            "executions": {
                eid: {"state": c.state, "total": c.total, "completed": c.completed, "failed": c.failed}
                for eid, c in self.executions.items()
            },
        }
        if self.status is Outcome.COMPLETE:
            payload["complete"] = list(self.complete)
        if self.execution_id is not None:
            payload["execution_id"] = self.execution_id
        if self.unreachable:
            payload["unreachable"] = True
        if seen := seen_payload(self.seen):
            payload["seen"] = seen
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> BatchEvent:
        """Read a payload (this release's or an earlier one's); a status it does not know reads as ``error``."""
        try:
            status = Outcome(str(payload.get("status")))
        except ValueError:
            status = Outcome.ERROR
        executions = payload.get("executions") or {}
        return cls(
            status=status,
            message=str(payload.get("message") or ""),
            service_name=str(payload.get("service_name") or ""),
            service_version=str(payload.get("service_version") or ""),
            execution_ids=_ids(payload.get("execution_ids")),
            executions={
                str(eid): Counts(
                    str(c.get("state", "")),
                    int(c.get("total", 0)),
                    int(c.get("completed", 0)),
                    int(c.get("failed", 0)),
                )
                for eid, c in executions.items()
                if isinstance(c, Mapping)
            },
            complete=_ids(payload.get("complete")),
            execution_id=None if payload.get("execution_id") is None else str(payload["execution_id"]),
            unreachable=payload.get("unreachable") is True,
            seen={str(eid): Seen.from_payload(s) for eid, s in _mapping(payload.get("seen")).items()},
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _ids(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
