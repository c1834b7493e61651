"""The one rule for waiting on batch executions, shared by the trigger, the operators and the sensor.

An execution has finished once it is complete, failed or canceled; a state the provider does not know counts
as running. A failed or canceled execution ends a wait at once: the batch cannot complete any more. A wait
lasts ``until`` every execution has finished (:data:`ALL`, the sensor's and the artifacts operator's wait), or
until the first of them has finished (:data:`FIRST`: the batch operator, which then starts its next chunk at
once so that ``max_active_executions`` stay busy); :func:`wait_over` is that rule. A
deadline is an absolute Unix timestamp (so that it holds across retries and triggerer restarts): once it has
passed the wait ends, and no sleep runs past it.

The trigger applies the rule in its own async loop, which never blocks; a worker that waits (the batch
operator with ``deferrable=False``, the artifacts operator) calls
:func:`~airflow_mlserver.executions.polling.wait_for_executions`; the sensor checks once per poke. How long a
server that cannot be read is waited out, by all of them, is :mod:`~airflow_mlserver.executions.outage`'s rule.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus


class Outcome(StrEnum):
    """How a wait ended: the trigger's event carries one as its ``status`` (its value, at the boundary)."""

    COMPLETE = "complete"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"
    ERROR = "error"


class Until(StrEnum):
    """How long a wait lasts: until every execution has finished, or until the first one has."""

    ALL = "all"
    FIRST = "first"

    @classmethod
    def _missing_(cls, value: object) -> Until:
        raise ValueError(f"until must be {cls.ALL.value!r} or {cls.FIRST.value!r}, not {value!r}")


ALL, FIRST = Until.ALL, Until.FIRST


def outcome(status: BatchStatus) -> Outcome | None:
    """The outcome once the execution has finished (complete, failed or canceled); None while it runs."""
    if status.is_complete:
        return Outcome.COMPLETE
    if status.is_failed:
        return Outcome.FAILED
    if status.is_canceled:
        return Outcome.CANCELED
    return None


def pending(status: BatchStatus) -> bool:
    """``Pending``: the server holds the execution but has not started it (it waits for capacity)."""
    return status.state.strip().lower() == "pending"


def ended(status: BatchStatus) -> bool:
    """Failed or canceled: the execution will never complete."""
    return outcome(status) in (Outcome.FAILED, Outcome.CANCELED)


def ended_message(execution_id: str, service_name: str, service_version: str, status: BatchStatus) -> str:
    """``Batch execution ... ended <state>: <server's reason>``, the start of every error about an ended one."""
    detail = f": {status.error_message}" if status.error_message else ""
    return (
        f"Batch execution {execution_id} of web service '{service_name}' version '{service_version}' "
        f"ended {status.state}{detail}"
    )


def wait_over(statuses: Sequence[BatchStatus], until: Until | str) -> bool:
    """Whether a wait on these executions ends: at once when one failed or was canceled, else when every one
    (``until`` :data:`ALL`) or any one (:data:`FIRST`) has finished."""
    until = Until(until)
    if any(ended(s) for s in statuses):
        return True
    finished = [s.is_finished for s in statuses]
    return all(finished) if until == ALL else any(finished)


def deadline_passed(deadline: float | None, now: float | None = None) -> bool:
    """Whether the deadline (a Unix timestamp; None for none) has passed at ``now`` (default: the clock's now)."""
    return deadline is not None and (time.time() if now is None else now) >= deadline


def sleep_time(interval: float, deadline: float | None) -> float:
    """Seconds to sleep before the next poll: ``interval``, but never past the deadline."""
    return interval if deadline is None else max(0.0, min(interval, deadline - time.time()))


#: First polls a second, per connection, that a burst of triggers created together is spread to.
FIRST_POLLS_PER_SECOND = 50.0


def first_wait(key: str, poll_interval: float, sharing: int, deadline: float | None) -> float:
    """Seconds before a trigger's first poll, so that triggers created together (a backfill, a mapped task, a
    restarted triggerer) do not all poll at once: a fraction fixed by ``key`` (its execution ids) of a window that
    grows with ``sharing``, the triggers holding the connection's client, at :data:`FIRST_POLLS_PER_SECOND`, up to
    one ``poll_interval``. A trigger alone waits at most 20 ms; never past the deadline."""
    window = min(max(poll_interval, 0.0), max(sharing, 1) / FIRST_POLLS_PER_SECOND)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return sleep_time(int.from_bytes(digest, "big") / 2.0**64 * window, deadline)
