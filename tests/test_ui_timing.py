"""The batch view's times, rates and ETAs, from what is known of each execution: a table per figure, no server.

The cases are the findings of a user: a chunk that waited Pending must not count the wait as work, a finished
batch must show neither an ETA nor a rate that keeps falling as time passes, and a finished execution's time is
its own (start to end), not the task's.
"""

from __future__ import annotations

import pytest

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.timing import Seen
from airflow_mlserver.ui.timing import ABOUT, AT_LEAST, AT_MOST, Estimate, ExecutionTimes, TaskTimes


def times(
    state: str, started: float | None, running: float | None, ended: float | None, now: float
) -> ExecutionTimes:
    return ExecutionTimes.of(BatchStatus("e", "s", "v", state, 100, 0), started, Seen(running, ended), now)


@pytest.mark.parametrize(
    ("t", "pending", "running", "took"),
    [
        (times("Pending", 100, None, None, 126), Estimate(26), None, None),  # pending now: exact so far
        (times("Running", 100, 126, None, 130), Estimate(26, ABOUT), Estimate(4, ABOUT), None),
        (times("Complete", 100, 126, 131, 500), Estimate(26, ABOUT), Estimate(5, ABOUT), Estimate(31, ABOUT)),
        (times("Complete", 100, None, 131, 500), None, None, Estimate(31, ABOUT)),  # never seen running
        (times("Running", None, 126, None, 130), None, Estimate(4, ABOUT), None),  # started elsewhere
        (times("Failed", None, None, None, 130), None, None, None),
    ],
)
def test_pending_and_running_apart(
    t: ExecutionTimes, pending: Estimate | None, running: Estimate | None, took: Estimate | None
) -> None:
    assert (t.pending(), t.running(), t.took()) == (pending, running, took)


@pytest.mark.parametrize(
    ("t", "completed", "rate", "eta"),
    [
        # 26 s pending then 4 s running for 40 records: 10/s, 6 s left; not 40/30
        (times("Running", 100, 126, None, 130), 40, Estimate(10, ABOUT), Estimate(6, ABOUT)),
        # running, but when it left Pending is unknown: the rate since the start is a floor, the ETA a ceiling
        (times("Running", 100, None, None, 130), 30, Estimate(1, AT_LEAST), Estimate(70, AT_MOST)),
        # finished: the rate over its own running time, whenever the page is read; no ETA
        (times("Complete", 100, 126, 136, 900), 100, Estimate(10, ABOUT), None),
        (times("Complete", 100, 126, 136, 9000), 100, Estimate(10, ABOUT), None),
        (times("Complete", 100, None, 125, 900), 100, Estimate(4, AT_LEAST), None),  # never seen running
        (times("Complete", None, None, 125, 900), 100, None, None),  # started elsewhere, never seen running
        (times("Pending", 100, None, None, 130), 0, None, None),
        (times("Running", 100, 126, None, 130), 0, None, None),  # nothing done yet: no rate, no ETA
        (times("Running", 100, 126, None, 130), 100, Estimate(25, ABOUT), None),  # all done, not finished
    ],
)
def test_rate_over_records_done_while_running_and_eta_only_while_running(
    t: ExecutionTimes, completed: int, rate: Estimate | None, eta: Estimate | None
) -> None:
    assert t.rate(completed) == rate
    assert t.eta(completed, 100) == eta


def test_the_task_rate_counts_only_the_time_some_execution_ran() -> None:
    # two chunks one after the other, each 20 s pending then 10 s running: 200 records in 20 s of running
    first = times("Complete", 0, 20, 30, 100)
    second = times("Complete", 30, 50, 60, 100)
    task = TaskTimes(0, [first, second], [100, 100], now=100)
    assert task.rate(200) == Estimate(10, ABOUT)
    assert task.elapsed(finished=True) == Estimate(60, ABOUT)
    assert task.eta(0) is None
    later = TaskTimes(0, [first, second], [100, 100], now=10_000)
    assert later.rate(200) == task.rate(200)  # finished: it does not fall as time passes


def test_the_task_rate_overlapping_executions_and_unknowns() -> None:
    a = times("Running", 0, 10, None, 30)
    b = times("Running", 0, 20, None, 30)
    assert TaskTimes(0, [a, b], [100, 100], 30).rate(200) == Estimate(10, ABOUT)  # union 10..30
    c = times("Running", 0, None, None, 30)
    assert TaskTimes(0, [a, c], [100, 50], 30).rate(150) == Estimate(5, AT_LEAST)
    d = times("Complete", 0, None, 25, 30)  # finished, never seen running: from its start, a floor
    assert TaskTimes(0, [a, d], [100, 50], 30).rate(150) == Estimate(5, AT_LEAST)
    unknown = times("Complete", None, None, 25, 30)  # started elsewhere, never seen running: nothing honest
    assert TaskTimes(None, [a, unknown], [100, 50], 30).rate(150) is None
    pending = times("Pending", 25, None, None, 30)
    assert TaskTimes(0, [a, pending], [100, 0], 30).rate(100) == Estimate(5, ABOUT)
    assert TaskTimes(0, [a, pending], [100, 0], 30).eta(100) == Estimate(20, ABOUT)
    assert TaskTimes(0, [a], [100], 30).elapsed(finished=False) == Estimate(30)
