"""MLServerBatchExecutionsTrigger: the rule of what it announces (a table, no socket), then the trigger's ``run()``
in an event loop against the local server, batches started from outside with raw HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from airflow.triggers.shared_stream import SharedStreamManager

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.finished import Announced, Listing, known_after, plan, to_poll
from airflow_mlserver.triggers.executions import MLServerBatchExecutionsTrigger
from tests.helpers import Api, wait_for

SERVICE = "execwatch"


def _status(state: str, total: int = 2, completed: int = 2) -> BatchStatus:
    return BatchStatus("x", SERVICE, "v1", state, total, completed)


RUNNING, COMPLETE, FAILED, CANCELED = (_status(s) for s in ("Running", "Complete", "Failed", "Canceled"))

# memory (None: nothing remembered), listing {id: status, or None when not read}, states -> announce, remember
PLAN = [
    ("first round: the finished are taken care of", None, {"a": COMPLETE, "b": RUNNING}, None, (), {"a"}),
    ("first round, nothing finished", None, {"b": RUNNING}, None, (), set()),
    ("a new one finished", {"a"}, {"a": COMPLETE, "b": COMPLETE}, None, ("b",), {"a", "b"}),
    ("still running", {"a"}, {"a": COMPLETE, "b": RUNNING}, None, (), {"a"}),
    ("finished while down", {"a"}, {"a": COMPLETE, "c": FAILED}, None, ("c",), {"a", "c"}),
    ("several, server's order", set(), {"c": CANCELED, "b": COMPLETE}, None, ("c", "b"), {"b", "c"}),
    ("states filter: failed only", set(), {"a": COMPLETE, "b": FAILED}, ["failed"], ("b",), {"a", "b"}),
    ("not read this round", set(), {"a": None}, None, (), set()),
    ("forgotten once no longer listed", {"gone", "a"}, {"a": COMPLETE}, None, (), {"a"}),
    ("an unknown state runs", set(), {"a": _status("Queued")}, None, (), set()),
    ("cancelled spelled the British way", set(), {"a": _status("Cancelled")}, None, ("a",), {"a"}),
]


@pytest.mark.parametrize(("why", "memory", "round_", "states", "announce", "remember"), PLAN)
def test_plan(
    why: str,
    memory: set[str] | None,
    round_: dict[str, BatchStatus | None],
    states: list[str] | None,
    announce: tuple[str, ...],
    remember: set[str],
) -> None:
    listing = Listing(tuple(round_), {e: s for e, s in round_.items() if s is not None})
    remembered = None if memory is None else Announced(frozenset(memory))
    decided = plan(remembered, listing, *([states] if states else []))
    assert (decided.announce, set(decided.remember.done)) == (announce, remember), why
    assert decided.changed == (remembered is None or decided.remember != remembered), why


def test_polls_read_only_what_can_still_change() -> None:
    known = {"a": COMPLETE, "gone": FAILED}
    assert to_poll(["a", "b", "c"], {**known, "b": RUNNING}) == ["b", "c"]
    assert known_after(["a", "b"], {**known, "b": RUNNING}) == {"a": COMPLETE}


@pytest.mark.parametrize(
    "stored",
    [None, "x", {"done": ["a"]}, {"form": 2, "done": []}, {"form": 1, "done": "a"}, {"form": 1, "done": [1]}],
)
def test_what_is_not_stored_in_its_form_reads_as_nothing(stored: Any) -> None:
    assert Announced.from_stored(stored) is None


def test_serialized_kwargs_recreate_the_trigger_and_arguments_are_checked() -> None:
    trigger = MLServerBatchExecutionsTrigger(
        service_name="s", service_version="v", mlserver_conn_id="c", poll_interval=5, states=["Failed"]
    )
    path, kwargs = trigger.serialize()
    assert path == "airflow_mlserver.triggers.executions.MLServerBatchExecutionsTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert MLServerBatchExecutionsTrigger(**kwargs).serialize() == (path, kwargs)
    assert trigger.shared_stream_key() == ("mlserver-batch-executions", "c", "s", "v", 5.0)
    assert (
        trigger.store_key == "mlserver_batch_executions/c/s/v/failed"
    )  # other states: a memory of their own
    other = MLServerBatchExecutionsTrigger(
        service_name="s", service_version="v", mlserver_conn_id="c", poll_interval=5
    )
    assert other.shared_stream_key() == trigger.shared_stream_key()  # one poll for both
    with pytest.raises(ValueError, match="states must be some of"):
        MLServerBatchExecutionsTrigger(service_name="s", service_version="v", states=["timeout"])
    with pytest.raises(ValueError, match="poll_interval must be above 0"):
        MLServerBatchExecutionsTrigger(service_name="s", service_version="v", poll_interval=0)


# --- against the local server --------------------------------------------------------------------------------


class MemoryStore:
    """Stands in for the asset's state store that the triggerer gives a watcher: JSON values by key."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))


class Watching:
    """A trigger's ``run()`` in an event loop of its own thread, as the triggerer runs it; its payloads so far."""

    def __init__(self, trigger: MLServerBatchExecutionsTrigger) -> None:
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self.thread.start()

    async def _main(self) -> None:
        self.task = asyncio.current_task()  # type: ignore[assignment]
        try:
            async for event in self.trigger.run():
                self.events.append(event.payload)
        except asyncio.CancelledError:
            pass

    def started(self) -> Watching:
        """Wait until its first round is taken (what it remembers is set)."""
        wait_for(
            "the trigger's first round", lambda: self.trigger._recalled or None, timeout=30, interval=0.05
        )
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        wait_for("the trigger's task", lambda: self.task, timeout=10)
        self.loop.call_soon_threadsafe(self.task.cancel)  # type: ignore[union-attr]
        self.thread.join(30)
        self.loop.close()


def _trigger(
    store: MemoryStore | None, service: str = SERVICE, states: list[str] | None = None
) -> MLServerBatchExecutionsTrigger:
    trigger = MLServerBatchExecutionsTrigger(
        service_name=service,
        service_version="v1",
        mlserver_conn_id="mlserver_default",
        poll_interval=0.2,
        states=states,
    )
    trigger.asset_state_store = store  # type: ignore[assignment]  # what the triggerer injects
    return trigger


@pytest.fixture
def watch(api: Api, mlserver_conn: str) -> Iterator[Any]:
    """Start watchers (stopped at the end); each test has a service version of its own, no executions yet."""
    watching: list[Watching] = []

    def start(trigger: MLServerBatchExecutionsTrigger) -> Watching:
        watching.append(Watching(trigger))
        return watching[-1].started()

    yield start
    for each in watching:
        each.stop()


@pytest.fixture
def service(api: Api, request: pytest.FixtureRequest) -> str:
    name = f"{SERVICE}_{abs(hash(request.node.name)) % 10**8}"
    api.publish(name, "v1", "import time\ntime.sleep(x)\ny = x", {"x": "numeric"}, {"y": "numeric"})
    return name


def _events_for(watching: Watching, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Wait for ``count`` events, then two more seconds (ten rounds): no other may come."""
    wait_for(f"{count} events", lambda: len(watching.events) >= count or None, timeout=timeout, interval=0.05)
    time.sleep(2)
    return list(watching.events)


def test_a_batch_started_from_outside_fires_one_event(api: Api, watch: Any, service: str) -> None:
    store = MemoryStore()
    watching = watch(_trigger(store, service))
    execution_id = api.start_batch(service, "v1", [{"x": 0.3}] * 3, 3)  # raw HTTP, not through Airflow
    (event,) = _events_for(watching, 1)
    assert event == {
        "execution_id": execution_id,
        "state": "Complete",
        "total": 3,
        "completed": 3,
        "failed": 0,
        "service_name": service,
        "service_version": "v1",
    }
    (stored,) = store.values.values()
    assert stored == {"form": 1, "done": [execution_id]}


def test_two_executions_and_a_canceled_one_fire_an_event_each(api: Api, watch: Any, service: str) -> None:
    watching = watch(_trigger(MemoryStore(), service))
    ids = [api.start_batch(service, "v1", [{"x": 0.2}] * 2, 2) for _ in range(2)]
    slow = api.start_batch(service, "v1", [{"x": 30.0}], 1)
    api.delete(f"/api/{service}/v1/batch/{slow}")  # canceled
    events = _events_for(watching, 3)
    assert sorted((e["execution_id"], e["state"]) for e in events) == sorted(
        [(ids[0], "Complete"), (ids[1], "Complete"), (slow, "Canceled")]
    )


def test_executions_finished_before_the_first_round_never_fire(api: Api, watch: Any, service: str) -> None:
    before = api.start_batch(service, "v1", [{"x": 0.0}], 1)
    api.wait(service, "v1", before)
    running = api.start_batch(service, "v1", [{"x": 1.0}], 1)  # not finished at the first round: it fires
    watching = watch(_trigger(MemoryStore(), service))
    assert [e["execution_id"] for e in _events_for(watching, 1)] == [running]


def test_a_restarted_trigger_fires_nothing_twice_and_what_finished_meanwhile_once(
    api: Api, watch: Any, service: str
) -> None:
    store = MemoryStore()
    first = watch(_trigger(store, service))
    fired = api.start_batch(service, "v1", [{"x": 0.1}], 1)
    assert [e["execution_id"] for e in _events_for(first, 1)] == [fired]
    first.stop()  # the triggerer stops; the execution below finishes while no trigger runs
    meanwhile = api.start_batch(service, "v1", [{"x": 0.0}], 1)
    api.wait(service, "v1", meanwhile)
    _, kwargs = first.trigger.serialize()
    again = MLServerBatchExecutionsTrigger(**kwargs)  # as a new triggerer recreates it: nothing in memory
    again.asset_state_store = store  # type: ignore[assignment]
    restarted = watch(again)
    assert [e["execution_id"] for e in _events_for(restarted, 1)] == [meanwhile]


def test_without_a_state_store_a_restart_fires_nothing_twice(api: Api, watch: Any, service: str) -> None:
    first = watch(_trigger(None, service))
    fired = api.start_batch(service, "v1", [{"x": 0.1}], 1)
    assert [e["execution_id"] for e in _events_for(first, 1)] == [fired]
    first.stop()
    restarted = watch(MLServerBatchExecutionsTrigger(**first.trigger.serialize()[1]))
    time.sleep(1)
    assert restarted.events == []  # the finished one is taken care of at its first round


def test_a_service_not_published_yet_is_polled_until_it_is(api: Api, watch: Any, mlserver_conn: str) -> None:
    name = f"{SERVICE}_later_{int(time.time() * 1000) % 10**8}"
    watching = Watching(_trigger(MemoryStore(), name))
    try:
        time.sleep(1)  # rounds fail: the service is unknown
        assert watching.events == [] and not watching.trigger._recalled
        api.publish(name, "v1", "y = x", {"x": "numeric"}, {"y": "numeric"})
        watching.started()
        execution_id = api.start_batch(name, "v1", [{"x": 1.0}], 1)
        assert [e["execution_id"] for e in _events_for(watching, 1)] == [execution_id]
    finally:
        watching.stop()


def test_watchers_of_one_service_share_one_poll_each_with_its_own_states(
    api: Api, mlserver_conn: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two watchers of one service through Airflow's shared-stream manager, as the triggerer runs them."""
    opened: list[dict[str, Any]] = []
    poll = MLServerBatchExecutionsTrigger.open_shared_stream.__func__  # type: ignore[attr-defined]

    async def counted(cls: type, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        opened.append(kwargs)
        async for listing in poll(cls, kwargs):
            yield listing

    monkeypatch.setattr(MLServerBatchExecutionsTrigger, "open_shared_stream", classmethod(counted))
    watchers = {"complete": _trigger(MemoryStore(), service, ["complete"])}
    watchers["canceled"] = _trigger(MemoryStore(), service, ["canceled"])

    async def main() -> tuple[dict[str, list[str]], str, str]:
        manager = SharedStreamManager()
        got: dict[str, list[str]] = {name: [] for name in watchers}

        async def consume(number: int, name: str) -> None:
            trigger = watchers[name]
            stream = manager.subscribe(trigger_id=number, trigger=trigger, key=trigger.shared_stream_key())
            async for event in trigger.filter_shared_stream(stream):
                got[name].append(event.payload["execution_id"])

        tasks = [asyncio.create_task(consume(n, name)) for n, name in enumerate(watchers)]
        while not all(t._recalled for t in watchers.values()):
            await asyncio.sleep(0.05)
        complete = await asyncio.to_thread(api.start_batch, service, "v1", [{"x": 0.1}], 1)
        canceled = await asyncio.to_thread(api.start_batch, service, "v1", [{"x": 30.0}], 1)
        await asyncio.to_thread(api.delete, f"/api/{service}/v1/batch/{canceled}")
        while not all(got.values()):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        for number, task in enumerate(tasks):
            task.cancel()
            await manager.unsubscribe(number, watchers["complete"].shared_stream_key())
        await manager.stop_all()
        return got, complete, canceled

    got, complete, canceled = asyncio.run(asyncio.wait_for(main(), 60))
    assert got == {"complete": [complete], "canceled": [canceled]}
    assert len(opened) == 1  # one poll for both
