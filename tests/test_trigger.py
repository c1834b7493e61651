"""MLServerBatchTrigger on its own, in an event loop as the triggerer runs it, against the local server."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.progress import ProgressLog, duration, scored_sentence
from airflow_mlserver.server.process import LocalMLServer
from airflow_mlserver.triggers.batch import MLServerBatchTrigger
from tests.helpers import Api


def _events(trigger: MLServerBatchTrigger, timeout: float = 60) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def _trigger(execution_ids: list[str], service: str = "trig", **kwargs: Any) -> MLServerBatchTrigger:
    return MLServerBatchTrigger(
        mlserver_conn_id="mlserver_default",
        service_name=service,
        service_version="v1",
        execution_ids=execution_ids,
        poll_interval=0.2,
        **kwargs,
    )


@pytest.fixture(scope="module")
def services(api: Api) -> None:
    api.publish("trig", "v1", "import time\ntime.sleep(x)\ny = x", {"x": "numeric"}, {"y": "numeric"})
    api.publish(
        "trigbad", "v1", "y = x", {"x": "numeric"}, {"y": "numeric"}, init_code="raise OSError('no model')"
    )


def test_serialized_kwargs_hold_no_secret_and_recreate_the_trigger(mlserver: LocalMLServer) -> None:
    trigger = _trigger(
        ["a", "b"],
        deadline=123.0,
        labels={"a": "chunk 1 of 2"},
        started={"a": 100.0},
        map_index=3,
        until="first",
    )
    path, kwargs = trigger.serialize()
    assert path == "airflow_mlserver.triggers.batch.MLServerBatchTrigger"
    assert mlserver.password not in repr(kwargs)
    assert MLServerBatchTrigger(**kwargs).serialize() == (path, kwargs)


def test_one_complete_event_for_several_executions(api: Api, mlserver_conn: str, services: None) -> None:
    ids = [api.start_batch("trig", "v1", [{"x": 0.2}] * 3, 3) for _ in range(2)]
    (event,) = _events(_trigger(ids))
    assert event["status"] == "complete"
    assert set(event["executions"]) == set(ids)
    assert all(e["completed"] == 3 for e in event["executions"].values())


def test_until_first_ends_the_wait_as_soon_as_one_execution_is_complete(
    api: Api, mlserver_conn: str, services: None
) -> None:
    slow = api.start_batch("trig", "v1", [{"x": 30.0}], 1)
    quick = api.start_batch("trig", "v1", [{"x": 0.1}], 1)
    started = time.monotonic()
    (event,) = _events(_trigger([slow, quick], until="first"))
    assert (event["status"], event["complete"]) == ("complete", [quick])
    assert event["message"].startswith("1 of 2 batch executions of web service 'trig' version 'v1' complete")
    assert time.monotonic() - started < 20
    assert api.status("trig", "v1", slow)["state"] == "Running"  # the other one still runs
    api.delete(f"/api/trig/v1/batch/{slow}")


def test_the_waiting_rule_for_every_execution_and_for_the_first() -> None:
    from airflow_mlserver.executions.waiting import ALL, FIRST, wait_over

    running, complete, failed = _status("Running", 5), _status("Complete", 1000), _status("Failed", 5)
    assert [wait_over([running, complete], until) for until in (ALL, FIRST)] == [False, True]
    assert [wait_over([complete, complete], until) for until in (ALL, FIRST)] == [True, True]
    assert [wait_over([running, running], until) for until in (ALL, FIRST)] == [False, False]
    assert [wait_over([running, failed], until) for until in (ALL, FIRST)] == [True, True]
    with pytest.raises(ValueError, match="until must be 'all' or 'first', not 'any'"):
        wait_over([running], "any")


def test_failed_event_when_an_execution_fails(api: Api, mlserver_conn: str, services: None) -> None:
    execution_id = api.start_batch("trigbad", "v1", [{"x": 1.0}], 1)
    (event,) = _events(_trigger([execution_id], service="trigbad"))
    assert event["status"] == "failed"
    assert event["execution_id"] == execution_id
    assert "initCode failed: OSError: no model" in event["message"]


def test_canceled_event(api: Api, mlserver_conn: str, services: None) -> None:
    execution_id = api.start_batch("trig", "v1", [{"x": 0.5}] * 20, 1)
    api.delete(f"/api/trig/v1/batch/{execution_id}")
    (event,) = _events(_trigger([execution_id]))
    assert event["status"] == "canceled"


def test_unknown_execution_is_an_error_event(mlserver_conn: str, services: None) -> None:
    (event,) = _events(_trigger(["no-such-execution"]))
    assert event["status"] == "error"
    assert "no-such-execution" in event["message"]


def test_timeout_event_at_the_deadline_without_cancelling(
    api: Api, mlserver_conn: str, services: None
) -> None:
    execution_id = api.start_batch("trig", "v1", [{"x": 0.5}] * 40, 1)
    started = time.monotonic()
    (event,) = _events(_trigger([execution_id], deadline=time.time() + 1.5))
    assert event["status"] == "timeout"
    assert 1.0 < time.monotonic() - started < 10
    assert api.status("trig", "v1", execution_id)["state"] == "Running"  # the trigger only observes
    assert api.status("trig", "v1", execution_id)["cancelRequestCount"] == 0
    api.delete(f"/api/trig/v1/batch/{execution_id}")


def test_unreadable_server_is_unknown_not_failed(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLSERVER_DOWN", f"mlserver://admin:pw@127.0.0.1:{port}?max_retries=0&timeout=1"
    )
    trigger = MLServerBatchTrigger(
        mlserver_conn_id="mlserver_down", service_name="trig", service_version="v1", execution_ids=["x"],
        poll_interval=0.2, deadline=time.time() + 3,
    )  # fmt: skip
    (event,) = _events(trigger)
    assert event["status"] == "timeout"  # never "failed" while the server cannot be read
    assert "Batch state unknown" in capfd.readouterr().out


def test_on_kill_cancels_once_and_cleanup_cancels_nothing(
    api: Api, mlserver_conn: str, services: None
) -> None:
    execution_id = api.start_batch("trig", "v1", [{"x": 0.5}] * 40, 1)
    trigger = _trigger([execution_id])
    asyncio.run(trigger.cleanup())
    assert api.status("trig", "v1", execution_id)["cancelRequestCount"] == 0
    asyncio.run(trigger.on_kill())
    status = api.status("trig", "v1", execution_id)
    assert status["state"] == "Canceled" and status["cancelRequestCount"] == 1
    keep = _trigger([execution_id], cancel_on_kill=False)
    asyncio.run(keep.on_kill())
    assert api.status("trig", "v1", execution_id)["cancelRequestCount"] == 1


def test_pending_execution_says_how_long_it_has_waited(
    api: Api, mlserver_conn: str, services: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """Both workers busy: the execution is Pending; the log says so, from its stored start, then when it starts."""
    busy = api.start_batch("trig", "v1", [{"x": 2.0}] * 2, 2)
    deadline = time.monotonic() + 30
    while api.status("trig", "v1", busy)["state"] != "Running" and time.monotonic() < deadline:
        time.sleep(0.05)
    execution_id = api.start_batch("trig", "v1", [{"x": 1.0}], 1)
    assert api.status("trig", "v1", execution_id)["state"] == "Pending"
    trigger = _trigger(
        [execution_id],
        labels={execution_id: "chunk 2 of 3"},
        started={execution_id: time.time() - 125},
        map_index=3,
    )
    (event,) = _events(trigger)
    assert event["status"] == "complete"
    out = capfd.readouterr().out
    assert f"map index 3: Batch execution {execution_id} (chunk 2 of 3) is Pending: waiting 2m0" in out
    assert "for the server to start it" in out
    assert f"map index 3: Batch execution {execution_id} (chunk 2 of 3) is Running after waiting 2m0" in out
    assert "0.0 records/s" not in out


def _status(state: str, completed: int, total: int = 1000, execution_id: str = "e1") -> BatchStatus:
    return BatchStatus(execution_id, "svc", "1", state, total, completed)


def test_progress_is_said_once_a_minute_with_rate_and_eta() -> None:
    log = logging.getLogger("test_progress")
    progress = ProgressLog(log, {"e1": "chunk 1 of 1"}, {"e1": 1000.0})
    assert progress.lines([_status("Pending", 0)], now=1192.0) == [
        "Batch execution e1 (chunk 1 of 1) is Pending: waiting 3m12s for the server to start it"
    ]
    assert progress.lines([_status("Pending", 0)], now=1200.0) == []  # not a minute yet
    assert progress.lines([_status("Running", 0)], now=1210.0) == [
        "Batch execution e1 (chunk 1 of 1) is Running after waiting 3m30s for the server to start it"
    ]
    assert progress.lines([_status("Running", 0)], now=1252.0) == [
        "Batch progress (chunk 1 of 1): 0/1,000 records (0.0%); no record finished in the last 42s"
    ]
    assert progress.lines([_status("Running", 100)], now=1300.0) == []
    assert progress.lines([_status("Running", 450)], now=1315.0) == [
        "Batch progress (chunk 1 of 1): 450/1,000 records (45.0%), 4.3 records/s, ETA 2m08s"
    ]


def test_progress_of_several_executions_and_a_mapped_task() -> None:
    progress = ProgressLog(logging.getLogger("test_progress"), prefix="map index 2: ")
    statuses = [
        _status("Running", 20, 50, "a"),
        _status("Running", 10, 50, "b"),
        _status("Complete", 50, 50, "c"),
        _status("Pending", 0, 50, "d"),
    ]
    assert progress.lines(statuses, now=500.0) == [
        "map index 2: Batch execution d is Pending: waiting 0.0s for the server to start it",
        "map index 2: Batch progress (2 executions running): 80/200 records (40.0%)",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (3.25, "3.2s"), (9.96, "10s"), (42, "42s"), (192, "3m12s"), (3599.6, "1h00m"),
     (3720, "1h02m"), (93784, "26h03m")],
)  # fmt: skip
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_final_sentence() -> None:
    summary = {
        "service_name": "TxService",
        "service_version": "1.0",
        "total": 50_000,
        "succeeded": 49_990,
        "failed": 10,
        "output_uri": "s3://bucket/scores/2026-11-30.parquet",
        "duration_seconds": 243.0,
    }
    assert scored_sentence(summary) == (
        "Scored 50,000 records with web service 'TxService' version '1.0' in 4m03s (205.8 records/s): 49,990 "
        "succeeded, 10 failed; results in s3://bucket/scores/2026-11-30.parquet"
    )
    one = summary | {"total": 1, "succeeded": 1, "failed": 0, "output_uri": None, "duration_seconds": 0.5}
    assert scored_sentence(one, "map index 0: ") == (
        "map index 0: Scored 1 record with web service 'TxService' version '1.0' in 0.5s (2.0 records/s): 1 "
        "succeeded, 0 failed; no results file (no output_path)"
    )
    slow = summary | {"total": 4, "succeeded": 4, "failed": 0, "duration_seconds": 90.4}
    assert "Scored 4 records with web service 'TxService' version '1.0' in 1m30s (0.044 records/s)" in (
        scored_sentence(slow)
    )


# --- unreachable_timeout: the trigger's side of the rule of tests/test_unreachable.py --------------------------


def test_unreachable_timeout_is_stored_only_when_given_and_an_earlier_trigger_gets_the_default() -> None:
    path, kwargs = _trigger(["a"], unreachable_timeout=120).serialize()
    assert kwargs["unreachable_timeout"] == 120.0
    assert MLServerBatchTrigger(**kwargs).serialize() == (path, kwargs)
    _, default = _trigger(["a"]).serialize()
    assert "unreachable_timeout" not in default  # stored as earlier releases stored it
    assert MLServerBatchTrigger(**default).unreachable_timeout == 30 * 60


def _down_trigger(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> MLServerBatchTrigger:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLSERVER_DOWN", f"mlserver://admin:pw@127.0.0.1:{port}?max_retries=0&timeout=1"
    )
    return MLServerBatchTrigger(
        mlserver_conn_id="mlserver_down", service_name="trig", service_version="v1", execution_ids=["x"],
        poll_interval=0.2, **kwargs,
    )  # fmt: skip


def test_an_unreadable_server_ends_the_wait_after_unreachable_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    (event,) = _events(_down_trigger(monkeypatch, unreachable_timeout=1, deadline=time.time() + 30))
    assert 1.0 <= time.monotonic() - started < 5
    assert (event["status"], event["unreachable"]) == ("error", True)
    assert event["message"].startswith("The server was not readable for 1.")
    assert "Last error: Could not log in (POST /login, tried " in event["message"]
    assert "nothing answers at http://127.0.0.1:" in event["message"]


def test_the_deadline_wins_over_unreachable_timeout_when_it_comes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    (event,) = _events(_down_trigger(monkeypatch, unreachable_timeout=30, deadline=time.time() + 1))
    assert event["status"] == "timeout" and "unreachable" not in event
    assert time.monotonic() - started < 5


# --- the token cache's login locks, one set per event loop -----------------------------------------------------


def _auth() -> Any:
    from types import SimpleNamespace

    from airflow_mlserver.client.auth import Auth

    settings = SimpleNamespace(
        conn_id="locks", base_url="http://127.0.0.1:1", login="u", password="p", secrets=()
    )
    return Auth(settings, logging.getLogger("test_auth"))  # type: ignore[arg-type]


def test_login_is_single_flight_per_loop_and_a_finished_loop_leaves_no_entry() -> None:
    import gc
    import weakref

    from airflow_mlserver.client import auth as auth_module

    auth, order = _auth(), []

    async def login(n: int) -> None:
        async with auth.async_lock():
            entry = auth_module._ASYNC_LOCKS[asyncio.get_running_loop()][auth.key]
            order.append(("in", n, entry.users))
            await asyncio.sleep(0.01)
            order.append(("out", n))

    async def contend() -> None:
        await asyncio.gather(login(1), login(2), login(3))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(contend())
    # one at a time; the others waited (and counted as users while they did)
    assert order == [("in", 1, 1), ("out", 1), ("in", 2, 2), ("out", 2), ("in", 3, 1), ("out", 3)]
    assert loop not in auth_module._ASYNC_LOCKS  # the last to leave dropped the loop's entry
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None  # nothing of the module keeps the loop alive (a waited-on lock refers to its loop)


def test_a_loop_closed_while_a_login_holds_the_lock_leaves_no_entry_once_collected() -> None:
    import gc
    import weakref

    from airflow_mlserver.client import auth as auth_module

    auth = _auth()

    async def hold() -> None:
        async with auth.async_lock():
            await asyncio.get_running_loop().create_future()  # never resolved

    loop = asyncio.new_event_loop()
    task = loop.create_task(hold())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert auth.key in auth_module._ASYNC_LOCKS[loop]
    gone = weakref.ref(loop)
    loop.close()  # without finishing the task: its exit never runs
    del loop, task
    gc.collect()
    assert gone() is None
    assert not any(auth.key in locks for locks in auth_module._ASYNC_LOCKS.values())
