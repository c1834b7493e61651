"""MLServerBatchTrigger on its own, in an event loop as the triggerer runs it, against the local server."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

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
    trigger = _trigger(["a", "b"], deadline=123.0)
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
