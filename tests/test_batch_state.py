"""What is stored reads across an upgrade: the batch state in every form a release wrote, the trigger as the
triggerer stored it, the trigger's event, and DAGs serialized by release 0.1.0 (``tests/fixtures/earlier_release``).
No server, no Airflow run."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_mlserver.executions.events import BatchEvent, Counts
from airflow_mlserver.executions.waiting import FIRST, Outcome
from airflow_mlserver.operators.batch.state import BatchState, Part, Round, StartIntent, numbers, ranges

EARLIER = Path(__file__).parent / "fixtures" / "earlier_release"


def _fixture(name: str) -> Any:
    return json.loads((EARLIER / name).read_text())


def test_this_release_stores_a_list_of_rounds_of_parts_and_reads_it_back() -> None:
    state = BatchState(
        "svc", "1", started=1_780_000_000.25, deadline=1_780_003_600.0,
        rounds=[Round([Part("0-9", "a", 1_780_000_001.5), Part("10-14")]),
                Round([Part("3,5,10-12", "c", 1_780_000_100.0)])],
        intent=StartIntent(0, 1, 5, ["a", "c", "other"], 1_780_000_200.0, "k-1"), written=[0],
    )  # fmt: skip
    stored = state.to_stored()
    assert stored == {
        "service": "svc",
        "version": "1",
        "started": "2026-05-28T20:26:40.250+00:00",
        "deadline": "2026-05-28T21:26:40.000+00:00",
        "rounds": [
            {"parts": [
                {"records": "0-9", "execution_id": "a", "started": "2026-05-28T20:26:41.500+00:00"},
                {"records": "10-14", "execution_id": None, "started": None},
            ]},
            {"parts": [{"records": "3,5,10-12", "execution_id": "c", "started": "2026-05-28T20:28:20.000+00:00"}]},
        ],
        "intent": {"round": 0, "part": 1, "records": 5, "before": ["a", "c", "other"],
                   "at": "2026-05-28T20:30:00.000+00:00", "key": "k-1"},
        "written": "0",
    }  # fmt: skip
    assert json.loads(json.dumps(stored)) == stored  # plain JSON, as the store keeps it
    assert BatchState.from_stored(stored) == state
    assert state.execution_ids() == ["a", "c"] and state.chunk_execution_ids() == ["a"]
    assert list(state.rounds[1].parts[0].numbers()) == [3, 5, 10, 11, 12]
    assert state.rescore_rounds == 1


def test_the_form_with_rescore_rounds_an_intent_and_staged_chunks_reads() -> None:
    state = BatchState.from_stored(_fixture("state-rounds-intent.json"))
    assert [[(p.records, p.execution_id) for p in r.parts] for r in state.rounds] == [
        [("", "c0"), ("", "c1"), ("", "c2")],
        [("3,5,10-12", "r1")],
    ]
    assert [p.started for p in state.chunks.parts] == [1_780_000_000.5, 1_780_000_001.0, 1_780_000_050.0]
    assert state.rounds[1].parts[0].started == 1_780_000_100.0
    assert state.intent == StartIntent(2, 0, 2, ["c0", "c1", "c2", "r1", "other"], 1_780_000_200.0)
    assert (state.written, state.deadline, state.started) == ([0, 1, 2], 1_780_003_600.0, 1_780_000_000.0)
    assert state.number_chunks([4, 4, 2])  # the chunks' records, from the input's chunking
    assert [p.records for p in state.chunks.parts] == ["0-3", "4-7", "8-9"]
    assert BatchState.from_stored(state.to_stored()) == state  # then stored as this release's form


def test_the_form_with_an_intent_during_the_chunks_reads() -> None:
    state = BatchState.from_stored(_fixture("state-chunks-intent.json"))
    assert [p.execution_id for p in state.chunks.parts] == ["c0", "c1", None, None]
    assert state.intent == StartIntent(0, 2, 3, ["c0", "c1"], 1_780_000_060.0)
    assert state.written == [0] and state.deadline is None and state.rescore_rounds == 0


@pytest.mark.parametrize("name", ["state-timestamps.json", "state-started.json"])
def test_the_oldest_forms_with_unix_timestamps_read(name: str) -> None:
    state = BatchState.from_stored(_fixture(name))
    assert state.started == 1_780_000_000.25 and len(state.chunks.parts) == 2
    assert state.chunk_execution_ids()[0] == "c0"
    assert state.intent is None and state.written == [] and state.rescore_rounds == 0
    started = [p.started for p in state.chunks.parts]
    assert started[0] in (None, 1_780_000_000.5)  # no per-chunk start stored in the oldest form
    assert state.number_chunks(
        [3]
    )  # still unnumbered: a chunking that does not fit the chunks changes nothing
    assert [p.records for p in state.chunks.parts] == ["", ""]
    assert state.number_chunks([3, 2]) and [p.records for p in state.chunks.parts] == ["0-2", "3-4"]
    assert not state.number_chunks([3, 2])  # numbered once


def test_record_ranges_read_back() -> None:
    for run in ([], [0], [0, 1, 2], [4, 6, 7, 8, 20]):
        assert list(numbers(ranges(run))) == run
    assert ranges(range(5, 9)) == "5-8"
    assert numbers("0-99999") == range(100_000)  # a chunk's numbers are never a list
    assert list(Round.chunks([3, 2]).parts) == [Part("0-2"), Part("3-4")]


def test_a_trigger_the_earlier_release_stored_runs_again() -> None:
    classpath, kwargs = _fixture("trigger.json")
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)
    assert trigger.until is FIRST and trigger.execution_ids == ["e1", "e2"]
    assert trigger.serialize() == (classpath, kwargs)  # and this release stores it the same way


def test_the_trigger_event_is_one_class_with_the_payload_earlier_releases_wrote() -> None:
    event = BatchEvent(
        Outcome.COMPLETE, "1 of 2 complete", "svc", "1", ("a", "b"),
        {"a": Counts("Complete", 3, 3, 0), "b": Counts("Running", 3, 1, 0)}, complete=("a",),
    )  # fmt: skip
    payload = event.to_payload()
    assert payload == {
        "status": "complete", "message": "1 of 2 complete", "service_name": "svc", "service_version": "1",
        "execution_ids": ["a", "b"], "complete": ["a"],
        "executions": {"a": {"state": "Complete", "total": 3, "completed": 3, "failed": 0},
                       "b": {"state": "Running", "total": 3, "completed": 1, "failed": 0}},
    }  # fmt: skip
    assert BatchEvent.from_payload(payload) == event
    failed = {"status": "failed", "message": "ended Failed", "service_name": "svc", "service_version": "1",
              "execution_ids": ["a"], "executions": {}, "execution_id": "a"}  # fmt: skip
    assert BatchEvent.from_payload(failed).status is Outcome.FAILED
    assert BatchEvent.from_payload(failed).execution_id == "a"
    assert BatchEvent.from_payload({"status": "something new"}).status is Outcome.ERROR


@pytest.mark.parametrize("dag_id", ["mlserver_batch_scoring", "mlserver_external_batch_sensor"])
def test_dags_the_earlier_release_serialized_still_resolve(dag_id: str) -> None:
    """Airflow keeps each task's class path (``_task_module``, ``task_type``) and extra link names; the classes
    are still where those paths say, and the DAG deserializes."""
    from airflow.serialization.serialized_objects import DagSerialization

    data = _fixture(f"dag-{dag_id}.json")
    dag = DagSerialization.from_dict(data)
    ours = [t for t in data["dag"]["tasks"] if t["__var"]["_task_module"].startswith("airflow_mlserver")]
    assert ours
    for task in ours:
        found = getattr(importlib.import_module(task["__var"]["_task_module"]), task["__var"]["task_type"])
        assert found.__name__ == task["__var"]["task_type"]
        assert dag.get_task(task["__var"]["task_id"]).task_type == task["__var"]["task_type"]
        links = task["__var"].get("_operator_extra_links") or {}
        assert list(links) == [link.name for link in found.operator_extra_links]
