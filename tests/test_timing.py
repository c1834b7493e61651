"""When polls saw executions run and finish: the rule (:func:`observe`), and how the times travel from the
trigger's event and the driver's polls into the stored state, which earlier releases' forms still read."""

from __future__ import annotations

import math

import pytest

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.events import BatchEvent, Counts
from airflow_mlserver.executions.timing import Seen, observe, observed, seen_payload
from airflow_mlserver.executions.waiting import Outcome
from airflow_mlserver.operators.batch.state import BatchState, Part, Round


def status(state: str, completed: int = 0, execution_id: str = "e1") -> BatchStatus:
    return BatchStatus(execution_id, "svc", "v1", state, 10, completed)


@pytest.mark.parametrize(
    ("polls", "expected"),
    [
        ([("Pending", 0)], Seen()),
        ([("Pending", 0), ("Running", 2)], Seen(running=2.0)),
        ([("Running", 0), ("Running", 5)], Seen(running=1.0)),  # the first poll that saw it running
        ([("Pending", 0), ("Complete", 10)], Seen(ended=2.0)),  # never seen running: unknown, not guessed
        ([("Running", 1), ("Failed", 3), ("Failed", 3)], Seen(running=1.0, ended=2.0)),
        ([("Pending", 4)], Seen(running=1.0)),  # records done: it runs, whatever the state says
        ([("Queued", 0)], Seen(running=1.0)),  # a state we do not know counts as running
        ([("Cancelled", 0)], Seen(ended=1.0)),
    ],
)
def test_observe_keeps_the_first_poll_that_saw_it_run_and_finish(
    polls: list[tuple[str, int]], expected: Seen
) -> None:
    seen: dict[str, Seen] = {}
    for now, (state, completed) in enumerate(polls, start=1):
        observe(seen, [status(state, completed)], float(now))
    assert seen["e1"] == expected


def test_merge_keeps_the_earlier_of_two_observers() -> None:
    mine = Seen(running=5.0)
    mine.merge(Seen(running=3.0, ended=9.0))
    mine.merge(Seen(running=4.0, ended=None))
    assert mine == Seen(running=3.0, ended=9.0)


def test_the_event_carries_what_the_trigger_saw_and_earlier_events_still_read() -> None:
    event = BatchEvent(
        Outcome.COMPLETE, "done", "svc", "v1", ("e1", "e2"),
        {"e1": Counts("Complete", 10, 10, 0)}, complete=("e1",),
        seen={"e1": Seen(1.5, 7.0), "e2": Seen()},
    )  # fmt: skip
    payload = event.to_payload()
    assert payload["seen"] == {"e1": {"running": 1.5, "ended": 7.0}}  # nothing seen: left out
    assert BatchEvent.from_payload(payload).seen == {"e1": Seen(1.5, 7.0)}
    del payload["seen"]  # an earlier release's event
    assert BatchEvent.from_payload(payload).seen == {}
    odd = {**payload, "seen": {"e1": {"running": "soon", "ended": math.inf}, "e2": 3}}
    assert BatchEvent.from_payload(odd).seen == {"e1": Seen(), "e2": Seen()}


def test_the_state_stores_the_times_and_merges_them_by_execution() -> None:
    state = BatchState("svc", "v1", started=100.0, deadline=None, rounds=[Round.chunks([3, 2])])
    state.rounds[0].parts[0].execution_id, state.rounds[0].parts[0].started = "e1", 100.0
    state.note_seen(observed([status("Running", 1, "e1"), status("Running", 1, "other")], 130.0))
    state.note_seen({"e1": Seen(running=120.0, ended=160.0)})
    part = BatchState.from_stored(state.to_stored()).rounds[0].parts[0]
    assert (part.started, part.seen) == (100.0, Seen(running=120.0, ended=160.0))
    assert "running" not in state.rounds[0].parts[1].to_stored()  # not started: nothing stored
    assert Part.from_stored({"records": "0-2", "execution_id": "e1", "started": 100}).seen == Seen()


def test_seen_payload_is_plain_json() -> None:
    assert seen_payload({"a": Seen(1.0), "b": Seen()}) == {"a": {"running": 1.0}}
