"""The batch view's times and rates, from what is known of each execution (see :mod:`.batch_view`): pure
arithmetic on timestamps, with how sure each figure is.

- Time pending: from the start the operator sent to the first poll that saw the execution running ("about");
  while it is still pending, up to now (exact).
- Time running: from that poll to the first poll that saw it finished, or to now ("about").
- Rate: records done over the time running ("about"); where that is unknown (no poll saw it running), over
  the time since its start, which counts the wait as work: the real rate is "at least" that.
- ETA: only while running with records left, at that rate ("about"; "at most" for an "at least" rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.timing import Seen

EXACT = ""
ABOUT = "about"
AT_LEAST = "at least"
AT_MOST = "at most"


@dataclass(frozen=True)
class Estimate:
    """A duration in seconds or a rate in records per second, and how sure it is (``""``, ``about``, ...)."""

    value: float
    qualifier: str = EXACT


@dataclass(frozen=True)
class ExecutionTimes:
    """What is known of one execution's times (Unix timestamps; None where unknown).

    :param started: When the operator sent its start (unknown for an execution started elsewhere).
    :param seen_running: The first poll that saw it running; ``seen_ended``: the first that saw it finished.
    :param pending_now: It is pending now; ``running_now``: it runs now (not pending, not finished).
    """

    started: float | None
    seen_running: float | None
    seen_ended: float | None
    pending_now: bool
    running_now: bool
    now: float

    @classmethod
    def of(cls, status: BatchStatus, started: float | None, seen: Seen, now: float) -> ExecutionTimes:
        pending = (
            not status.is_finished and seen.running is None and status.state.strip().lower() == "pending"
        )
        running = not status.is_finished and not pending
        return cls(started, seen.running, seen.ended if status.is_finished else None, pending, running, now)

    @property
    def finished(self) -> bool:
        return not self.pending_now and not self.running_now

    def pending(self) -> Estimate | None:
        if self.started is None:
            return None
        if self.pending_now:
            return Estimate(max(0.0, self.now - self.started))
        if self.seen_running is not None:
            return Estimate(max(0.0, self.seen_running - self.started), ABOUT)
        return None

    def running(self) -> Estimate | None:
        if self.seen_running is None:
            return None
        end = self.now if self.running_now else self.seen_ended
        return None if end is None else Estimate(max(0.0, end - self.seen_running), ABOUT)

    def took(self) -> Estimate | None:
        """A finished execution's time from its start to its end."""
        if not self.finished or self.started is None or self.seen_ended is None:
            return None
        return Estimate(max(0.0, self.seen_ended - self.started), ABOUT)

    def rate(self, completed: int) -> Estimate | None:
        if not completed:
            return None
        running = self.running()
        if running is not None and running.value > 0:
            return Estimate(completed / running.value, ABOUT)
        end = self.now if self.running_now else self.seen_ended
        if self.started is not None and end is not None and end > self.started:
            return Estimate(completed / (end - self.started), AT_LEAST)  # the wait counted as work: a floor
        return None

    def eta(self, completed: int, total: int) -> Estimate | None:
        if not self.running_now or completed >= total:
            return None
        rate = self.rate(completed)
        return None if rate is None else _left(total - completed, rate)


def _left(records: int, rate: Estimate) -> Estimate:
    return Estimate(records / rate.value, AT_MOST if rate.qualifier == AT_LEAST else ABOUT)


@dataclass(frozen=True)
class TaskTimes:
    """A task's executions together: its batch's time, its rate while executions ran, and what is left.

    :param started: When the batch started (the first try's start), if the operator stored it.
    :param executions: Every execution's times; ``completed``: the records done by each chunk.
    """

    started: float | None
    executions: Sequence[ExecutionTimes]
    completed: Sequence[int]
    now: float

    def elapsed(self, finished: bool) -> Estimate | None:
        starts = [e.started for e in self.executions if e.started is not None]
        first = self.started if self.started is not None else min(starts, default=None)
        if first is None:
            return None
        if not finished:
            return Estimate(max(0.0, self.now - first))
        ends = [e.seen_ended for e in self.executions]
        if not ends or any(end is None for end in ends):
            return None
        return Estimate(max(0.0, max(e for e in ends if e is not None) - first), ABOUT)

    def rate(self, completed: int) -> Estimate | None:
        """Records done over the time at least one execution ran (their running times' union)."""
        if not completed:
            return None
        spans, qualifier = [], ABOUT
        for e in self.executions:
            end = self.now if e.running_now else e.seen_ended
            begin = e.seen_running
            if begin is None and not e.pending_now:
                begin, qualifier = e.started, AT_LEAST  # the wait counted as work: a floor
            if begin is not None and end is not None and end > begin:
                spans.append((begin, end))
            elif not e.pending_now:
                return None  # an execution whose times are unknown: no honest rate
        seconds = _union(spans)
        return Estimate(completed / seconds, qualifier) if seconds > 0 else None

    def eta(self, left: int) -> Estimate | None:
        rate = self.rate(sum(self.completed))
        return None if rate is None or left <= 0 else _left(left, rate)


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for begin, finish in sorted(spans):
        if finish <= end:
            continue
        total += finish - max(begin, end)
        end = finish
    return total
