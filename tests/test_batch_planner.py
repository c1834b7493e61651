"""The batch operator's planner, case by case, with no server and no Airflow: a state, the statuses just read and
the time go in, the next actions come out (``operators/batch/planner.py``).

Each case is one the deployment and ``dag.test()`` tests prove on the real system: first starts under
``max_active_executions``, the next start when the first finishes, an ended execution started again, the
deadline, each crash window (a part started but not stored is a part not started: the driver's reconciliation
settles it before the planner sees the state), rescore rounds, ``max_failed_records`` after the last round (the
final pass counts, so the planner only finishes) and the staging order.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.waiting import FIRST
from airflow_mlserver.operators.batch.planner import (
    AddRound,
    Config,
    Finish,
    Look,
    ReadFailures,
    Restart,
    Stage,
    Start,
    Timeout,
    Wait,
    plan,
)
from airflow_mlserver.operators.batch.state import BatchState, Part, Round

NOW = 1_780_000_000.0


def _state(
    *rounds: Sequence[tuple[str, str | None]], written: Sequence[int] = (), deadline: float | None = None
) -> BatchState:
    """A state whose rounds have these parts: (record ranges, execution id or None)."""
    return BatchState(
        "svc",
        "1",
        started=NOW - 60,
        deadline=deadline,
        rounds=[
            Round([Part(records, eid, None if eid is None else NOW - 30) for records, eid in r])
            for r in rounds
        ],
        written=list(written),
    )


def _status(
    eid: str, state: str, total: int = 10, completed: int | None = None, failed: int | None = 0
) -> BatchStatus:
    done = total if state == "Complete" else (completed or 0)
    return BatchStatus(eid, "svc", "1", state, total, done, failed)


CHUNKS = [("0-9", None), ("10-19", None), ("20-29", None), ("30-34", None)]


def test_the_first_starts_fill_max_active_executions_in_order() -> None:
    assert plan(_state(CHUNKS), {}, Config(max_active=2), NOW) == [Start(0, 0), Start(0, 1), Wait((0, 1))]
    assert plan(_state(CHUNKS), {}, Config(max_active=9), NOW) == [
        Start(0, 0), Start(0, 1), Start(0, 2), Start(0, 3), Wait((0, 1, 2, 3))
    ]  # fmt: skip
    assert plan(_state(CHUNKS[:1]), {}, Config(), NOW) == [Start(0, 0), Wait((0,), FIRST)]


def test_the_next_part_starts_when_the_first_running_one_finishes() -> None:
    state = _state([("0-9", "a"), ("10-19", "b"), ("20-29", None), ("30-34", None)])
    running = {0: _status("a", "Running", completed=3), 1: _status("b", "Running")}
    assert plan(state, running, Config(max_active=2), NOW) == [Wait((0, 1))]
    one_done = {0: _status("a", "Running"), 1: _status("b", "Complete")}
    assert plan(state, one_done, Config(max_active=2), NOW) == [Start(0, 2), Wait((0, 2))]


def test_a_pending_execution_counts_as_running() -> None:
    state = _state([("0-9", "a"), ("10-19", None)])
    assert plan(state, {0: _status("a", "Pending")}, Config(max_active=1), NOW) == [Wait((0,))]


@pytest.mark.parametrize("ended", ["Failed", "Canceled", "cancelled"])
def test_an_ended_execution_found_on_reattaching_is_started_again(ended: str) -> None:
    state = _state([("0-9", "a"), ("10-19", "b")])
    statuses = {0: _status("a", ended), 1: _status("b", "Running")}
    assert plan(state, statuses, Config(max_active=2), NOW) == [
        Restart(0, "a", ended),
        Start(0, 0),
        Wait((0, 1)),
    ]
    # with one slot the other still runs: the ended part waits for its turn
    assert plan(state, statuses, Config(max_active=1), NOW) == [Restart(0, "a", ended), Wait((1,))]


def test_past_the_deadline_the_unfinished_are_canceled_and_the_task_fails() -> None:
    state = _state([("0-9", "a"), ("10-19", "b"), ("20-29", None)], deadline=NOW)
    statuses = {0: _status("a", "Complete"), 1: _status("b", "Running", completed=4)}
    assert plan(state, statuses, Config(max_active=2), NOW) == [Timeout(("b",), 14)]
    # before the deadline nothing of the kind
    assert plan(state, statuses, Config(max_active=2), NOW - 1) == [Start(0, 2), Wait((1, 2))]


def test_past_the_deadline_a_part_not_started_times_out_too() -> None:
    state = _state([("0-9", "a"), ("10-19", None)], deadline=NOW - 5)
    assert plan(state, {0: _status("a", "Complete")}, Config(), NOW) == [Timeout((), 10)]


def test_past_the_deadline_a_round_that_finished_is_not_a_timeout() -> None:
    state = _state([("0-9", "a")], deadline=NOW - 5)
    assert plan(state, {0: _status("a", "Complete")}, Config(), NOW) == [Finish()]


def test_a_part_whose_start_was_never_stored_is_started() -> None:
    """A crash between the intent and the stored id: reconciliation found no execution, so the part has none."""
    state = _state([("0-9", "a"), ("10-19", None)])
    assert plan(state, {0: _status("a", "Running")}, Config(max_active=2), NOW) == [Start(0, 1), Wait((0, 1))]


def test_complete_chunks_are_staged_in_order_once_and_only_with_an_output() -> None:
    state = _state([("0-9", "a"), ("10-19", "b"), ("20-29", "c"), ("30-34", None)], written=[0])
    statuses = {0: _status("a", "Complete"), 1: _status("b", "Complete"), 2: _status("c", "Running")}
    assert plan(state, statuses, Config(max_active=2, stage=True), NOW) == [
        Start(0, 3),
        Stage(1),
        Look(),
    ]  # staging takes time: look again before waiting
    assert plan(state, statuses, Config(max_active=2), NOW) == [Start(0, 3), Wait((2, 3))]


def test_the_last_chunks_staged_then_the_batch_finishes() -> None:
    state = _state([("0-9", "a"), ("10-19", "b")], written=[0])
    statuses = {0: _status("a", "Complete"), 1: _status("b", "Complete")}
    assert plan(state, statuses, Config(stage=True), NOW) == [Stage(1), Finish()]
    staged = _state([("0-9", "a"), ("10-19", "b")], written=[0, 1])
    assert plan(staged, statuses, Config(stage=True), NOW) == [Finish()]


def test_failed_records_are_read_then_rescored_in_parts_of_chunk_size() -> None:
    state = _state([("0-9", "a"), ("10-19", "b")])
    statuses = {0: _status("a", "Complete", failed=2), 1: _status("b", "Complete", failed=1)}
    config = Config(rescore_rounds=2, part_size=2)
    assert plan(state, statuses, config, NOW) == [ReadFailures(0)]
    assert plan(state, statuses, config, NOW, failed=[15, 3, 7]) == [AddRound(("3,7", "15"), 3)]
    assert plan(state, statuses, Config(rescore_rounds=2), NOW, failed=[3, 7, 15]) == [
        AddRound(("3,7,15",), 3)
    ]


def test_a_server_that_does_not_count_failures_has_its_results_read() -> None:
    state = _state([("0-9", "a")])
    assert plan(state, {0: _status("a", "Complete", failed=None)}, Config(rescore_rounds=1), NOW) == [
        ReadFailures(0)
    ]


def test_no_rescore_round_without_failures_or_rounds_left() -> None:
    state = _state([("0-9", "a")])
    clean = {0: _status("a", "Complete", failed=0)}
    failing = {0: _status("a", "Complete", failed=3)}
    assert plan(state, clean, Config(rescore_rounds=2), NOW) == [Finish()]
    assert plan(state, failing, Config(rescore_rounds=0), NOW) == [Finish()]
    assert plan(state, failing, Config(rescore_rounds=1), NOW, failed=[]) == [Finish()]


def test_a_rescore_round_starts_its_parts_and_ends_after_its_last_round() -> None:
    """``max_failed_records`` is counted by the final pass after the last round: here the planner finishes."""
    state = _state([("0-9", "a")], [("3,7", None), ("15", None)])
    config = Config(max_active=1, rescore_rounds=1, part_size=2, stage=True)
    assert plan(state, {}, config, NOW) == [Start(1, 0), Wait((0,))]
    state.rounds[1].parts[0].execution_id = "r0"
    assert plan(state, {0: _status("r0", "Complete", 2, failed=1)}, config, NOW) == [Start(1, 1), Wait((1,))]
    state.rounds[1].parts[1].execution_id = "r1"
    done = {0: _status("r0", "Complete", 2, failed=1), 1: _status("r1", "Complete", 1, failed=1)}
    assert plan(state, done, config, NOW) == [Finish()]  # one round asked: still failing records stay failed
    assert plan(state, done, Config(rescore_rounds=2), NOW) == [ReadFailures(1)]
    assert plan(state, done, Config(rescore_rounds=2), NOW, failed=[7]) == [AddRound(("7",), 1)]


def test_a_rescore_round_is_never_staged() -> None:
    state = _state([("0-9", "a")], [("3", "r0")], written=[0])
    assert plan(
        state, {0: _status("r0", "Complete", 1, failed=0)}, Config(rescore_rounds=1, stage=True), NOW
    ) == [Finish()]
