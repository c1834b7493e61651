"""A server that cannot be read while executions are waited on: one rule (``executions/outage.py``) for the
trigger, the in-worker wait, the sensor's pokes and the artifacts operator's wait.

The rule first, as tables with no server; then the in-worker wait and the sensor against scripted answers;
then the trigger and the in-worker wait against a local server that is stopped (and started again on its port
and data directory).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_mlserver.client.errors import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    MalformedResponseError,
    MLServerApiError,
    MLServerAuthError,
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
    ServiceNotFoundError,
)
from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.outage import (
    DEFAULT_UNREACHABLE_TIMEOUT,
    GIVE_UP,
    LOG,
    PERMANENT,
    QUIET,
    Outage,
    OutageWatch,
    back_line,
    error_line,
    gave_up_message,
    is_outage,
    judge,
    outage_line,
    outage_sleep,
    waited_for,
)
from airflow_mlserver.executions.polling import wait_for_executions

REFUSED = MLServerConnectionError("Could not get the status: GET /x failed once: connection refused.")


def _api(status: int, cls: type[MLServerApiError] = MLServerApiError) -> MLServerApiError:
    return cls(f"answered {status}", status, "message", "GET", "/api/s/v/batch/e")


# --- the rule, as tables ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (REFUSED, True),  # refused, unknown host, no answer in time: after the client's retries
        (MalformedResponseError("not JSON"), True),  # a proxy's page, a cut-off answer
        (_api(500), True),
        (_api(502), True),
        (_api(503), True),
        (_api(504), True),
        (_api(429), True),
        (_api(408), True),
        (_api(404, ExecutionNotFoundError), False),  # wrong input: the execution is unknown
        (_api(404, ServiceNotFoundError), False),
        (_api(404, ArtifactNotFoundError), False),
        (_api(400), False),
        (_api(403), False),
        (MLServerAuthError("refused"), False),
        (MLServerConfigError("bad setting"), False),
        (MLServerError("anything else"), False),
        (ValueError("not ours"), False),
    ],
    ids=lambda v: type(v).__name__ + (f"-{v.status}" if isinstance(v, MLServerApiError) else ""),
)
def test_what_is_an_outage(error: BaseException, outage: bool) -> None:
    assert is_outage(error) is outage


LIMIT = 120.0
STARTED = Outage(since=100.0, logged=100.5, error="old", polls=1)


@pytest.mark.parametrize(
    ("before", "error", "began", "now", "verdict", "after"),
    [
        # the first failed poll starts the outage when it began, and says so at once
        (None, REFUSED, 100.0, 100.5, LOG, Outage(100.0, 100.5, str(REFUSED), 1)),
        # within the minute: quiet, counted, the last error kept
        (STARTED, _api(503), 110.0, 110.2, QUIET, Outage(100.0, 100.5, str(_api(503)), 2)),
        # a minute after the last line: another line
        (STARTED, REFUSED, 160.0, 160.5, LOG, Outage(100.0, 160.5, str(REFUSED), 2)),
        # as long as unreachable_timeout: given up, with the last error
        (STARTED, REFUSED, 219.0, 220.0, GIVE_UP, Outage(100.0, 220.0, str(REFUSED), 2)),
        (STARTED, REFUSED, 219.0, 219.9, LOG, Outage(100.0, 219.9, str(REFUSED), 2)),
        # a first poll that itself took longer than unreachable_timeout (the client's own retries)
        (None, REFUSED, 0.0, 130.0, GIVE_UP, Outage(0.0, 130.0, str(REFUSED), 1)),
        # wrong input ends the wait at once, during an outage too; the outage is left as it was
        (None, _api(404, ExecutionNotFoundError), 0.0, 1.0, PERMANENT, None),
        (STARTED, MLServerAuthError("refused"), 150.0, 150.1, PERMANENT, STARTED),
    ],
)
def test_the_rule_after_a_failed_poll(
    before: Outage | None, error: BaseException, began: float, now: float, verdict: str, after: Outage | None
) -> None:
    judgement = judge(before, error, began, now, LIMIT)
    assert (judgement.verdict, judgement.outage) == (verdict, after)


@pytest.mark.parametrize(
    ("sleep", "outage", "now", "expected"),
    [
        (10.0, None, 500.0, 10.0),  # no outage: the poll interval
        (10.0, STARTED, 150.0, 10.0),
        (10.0, STARTED, 215.0, 5.0),  # never past the moment the outage is given up (100 + 120)
        (10.0, STARTED, 230.0, 0.0),
    ],
)
def test_no_sleep_runs_past_the_give_up(
    sleep: float, outage: Outage | None, now: float, expected: float
) -> None:
    assert outage_sleep(sleep, outage, LIMIT, now) == expected


def test_the_lines_and_the_message() -> None:
    outage = Outage(since=0.0, logged=62.0, error="Could not get it: refused.", polls=7)
    assert outage_line(outage, 62.0, 1800.0, "map index 2: ") == (
        "map index 2: Batch state unknown: the server has not been readable for 1m02s; waiting for it 28m58s "
        "more (unreachable_timeout 30m00s)"
    )
    assert error_line(outage, "map index 2: ") == "map index 2: Last error: Could not get it: refused"
    told = Outage(
        since=0.0, logged=0.0, error="Could not get x (GET /x, tried once): nothing answers. Check it."
    )
    assert (
        error_line(told) == "Last error: Could not get x (GET /x, tried once): nothing answers"
    )  # not the fix
    assert back_line(outage, 100.0) == "The server is readable again after 1m40s; waiting on"
    what = waited_for(["e1"], "svc", "1.0")
    assert what == "batch execution e1 of web service 'svc' version '1.0'"
    assert waited_for(["e1", "e2"], "svc", "1.0").startswith("batch executions e1 and e2 of")
    assert waited_for([f"e{i}" for i in range(8)], "s", "1").startswith(
        "batch executions e0, e1, e2 and 5 more of"
    )
    assert gave_up_message(outage, 1805.0, 1800.0, what) == (
        "The server was not readable for 30m05s (7 polls failed), as long as unreachable_timeout (30m00s) "
        "allows, while waiting for batch execution e1 of web service 'svc' version '1.0'. Last error: Could not "
        "get it: refused. Raise unreachable_timeout to wait longer; a retry of the task waits for the executions "
        "again."
    )
    assert DEFAULT_UNREACHABLE_TIMEOUT == 30 * 60


def test_an_outage_reads_back_from_its_stored_form() -> None:
    outage = Outage(1.5, 2.5, "refused", 3)
    assert Outage.from_stored(outage.to_stored()) == outage
    assert [Outage.from_stored(v) for v in (None, {}, {"since": "x"}, "text")] == [None, None, None, None]


class Lines:
    """A logger that keeps its lines, by level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args: Any) -> None:
        self.lines.append(("info", msg % args))

    def warning(self, msg: str, *args: Any) -> None:
        self.lines.append(("warning", msg % args))


def test_an_outage_is_logged_once_a_minute_not_on_every_poll() -> None:
    log = Lines()
    watch = OutageWatch(log, 600.0, "batch execution e1 of web service 's' version 'v'")
    verdicts = [watch.failed(REFUSED, t, t + 0.5) for t in range(0, 150, 10)]  # a poll every 10 s
    assert verdicts.count(LOG) == 3 and verdicts.count(QUIET) == 12  # at 0.5 s, 60.5 s and 120.5 s
    assert [level for level, _ in log.lines] == ["warning"] * 6  # the state, then the last error
    assert log.lines[2][1].startswith("Batch state unknown: the server has not been readable for 1m00s")
    assert log.lines[3][1] == "Last error: Could not get the status: GET /x failed once: connection refused"
    watch.readable(155.0)
    assert log.lines[-1] == ("info", "The server is readable again after 2m35s; waiting on")
    assert watch.outage is None
    assert watch.failed(REFUSED, 200.0, 200.1) is LOG  # a new outage, counted from its own start
    assert watch.outage is not None and watch.outage.since == 200.0


# --- the in-worker wait against scripted answers ----------------------------------------------------------------


def _status(state: str, execution_id: str = "e1") -> BatchStatus:
    return BatchStatus(execution_id, "svc", "v1", state, 10, 10 if state == "Complete" else 3)


class ScriptedHook:
    """Answers ``get_batch`` from a script: a status, or an error to raise; the last entry repeats."""

    def __init__(self, *script: BatchStatus | BaseException) -> None:
        self.script = list(script)
        self.calls = 0

    def get_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        self.calls += 1
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        return step


def _wait(hook: Any, log: Lines, **kwargs: Any) -> list[BatchStatus]:
    arguments: dict[str, Any] = {"deadline": None, "unreachable_timeout": 0.5, **kwargs}
    return wait_for_executions(
        hook, "svc", "v1", ["e1"], 0.02, on_poll=lambda statuses: None, log=log, **arguments
    )


def test_the_in_worker_wait_gives_up_after_unreachable_timeout_with_the_last_error() -> None:
    hook, log = ScriptedHook(_status("Running"), REFUSED), Lines()
    started = time.monotonic()
    with pytest.raises(MLServerConnectionError) as raised:
        _wait(hook, log, prefix="map index 1: ")
    assert 0.5 <= time.monotonic() - started < 3
    assert re.match(r"The server was not readable for \d\.\ds \(\d+ polls failed\)", str(raised.value))
    assert str(raised.value).endswith(
        "while waiting for batch execution e1 of web service 'svc' version 'v1'. Last error: Could not get the "
        "status: GET /x failed once: connection refused. Raise unreachable_timeout to wait longer; a retry of the "
        "task waits for the executions again."
    )
    assert raised.value.__cause__ is REFUSED
    assert hook.calls > 5  # it went on polling ...
    assert [line for _, line in log.lines if "Batch state unknown" in line] == [
        log.lines[0][1]
    ]  # ... said once
    assert log.lines[0][1].startswith(
        "map index 1: Batch state unknown: the server has not been readable for"
    )


def test_the_in_worker_wait_survives_an_outage_and_says_when_it_ends() -> None:
    hook, log = ScriptedHook(_status("Running"), REFUSED, _api(503), REFUSED, _status("Complete")), Lines()
    assert [s.state for s in _wait(hook, log)] == ["Complete"]
    assert [level for level, _ in log.lines] == ["warning", "warning", "info"]
    assert log.lines[2][1].startswith("The server is readable again after")


def test_wrong_input_ends_the_in_worker_wait_at_once() -> None:
    missing = _api(404, ExecutionNotFoundError)
    hook = ScriptedHook(REFUSED, missing)
    with pytest.raises(ExecutionNotFoundError):
        _wait(hook, Lines(), unreachable_timeout=60)
    assert hook.calls == 2


def test_the_deadline_still_wins_when_it_comes_first() -> None:
    hook = ScriptedHook(_status("Running"), REFUSED)
    started = time.monotonic()
    polled = _wait(hook, Lines(), deadline=time.time() + 0.2, unreachable_timeout=60)
    assert [s.state for s in polled] == [
        "Running"
    ]  # the last statuses read: the caller's deadline check fails
    assert time.monotonic() - started < 2
    with pytest.raises(
        MLServerConnectionError, match="connection refused"
    ):  # nothing read before the deadline
        _wait(ScriptedHook(REFUSED), Lines(), deadline=time.time() + 0.2, unreachable_timeout=60)


# --- the sensor's pokes -----------------------------------------------------------------------------------------


class Store(dict[str, Any]):
    """A task-state store's stand-in."""

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self[key] = value


def _sensor(hook: ScriptedHook, **kwargs: Any) -> Any:
    from airflow_mlserver.sensors.batch import MLServerBatchSensor

    sensor = MLServerBatchSensor(
        task_id="wait", service_name="svc", service_version="v1", execution_id="e1", **kwargs
    )
    sensor._status = lambda: hook.get_batch("svc", "v1", "e1")  # type: ignore[method-assign]
    return sensor


def test_a_poke_during_an_outage_is_not_done_until_unreachable_timeout() -> None:
    hook = ScriptedHook(REFUSED, REFUSED, _status("Running"), REFUSED)
    sensor = _sensor(hook, unreachable_timeout=0.3)
    assert [sensor.poke({}), sensor.poke({}), sensor.poke({})] == [False, False, False]
    assert sensor.poke({}) is False  # a new outage
    time.sleep(0.35)
    with pytest.raises(MLServerConnectionError, match=r"^The server was not readable for 0\.\ds \(2 polls"):
        sensor.poke({})
    with pytest.raises(ExecutionNotFoundError):  # wrong input: at once
        _sensor(ScriptedHook(_api(404, ExecutionNotFoundError))).poke({})


def test_a_rescheduled_sensor_keeps_its_outage_in_the_task_state_store() -> None:
    store = Store()
    context = {"task_state_store": store}
    first = _sensor(ScriptedHook(REFUSED), mode="reschedule", unreachable_timeout=0.3)
    assert first.poke(context) is False
    assert store["mlserver_outage"]["polls"] == 1
    time.sleep(0.35)
    again = _sensor(ScriptedHook(REFUSED), mode="reschedule", unreachable_timeout=0.3)  # a new process's poke
    with pytest.raises(MLServerConnectionError, match=r"^The server was not readable for 0\.\ds \(2 polls"):
        again.poke(context)
    back = _sensor(ScriptedHook(_status("Complete")), mode="reschedule")
    store["mlserver_outage"] = Outage(time.time() - 5, time.time() - 5, "refused").to_stored()
    assert back.poke(context) is True
    assert store["mlserver_outage"] == {}  # the outage is over


# --- against a local server that stops ------------------------------------------------------------------------

SLOW_CODE = "import time\ntime.sleep(x)\ny = x"


@pytest.fixture
def outage_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A server of the test's own (it is stopped), a slow service, and connection ``mlserver_outage`` to it with
    no retries of the client's own (a refused connection fails at once)."""
    from airflow_mlserver.server.process import LocalMLServer
    from tests.helpers import Api

    server = LocalMLServer(tmp_path / "data", workers=1)
    with server:
        api = Api(server)
        api.publish("outage", "v1", SLOW_CODE, {"x": "numeric"}, {"y": "numeric"})
        monkeypatch.setenv(
            "AIRFLOW_CONN_MLSERVER_OUTAGE",
            f"mlserver://admin:{quote(server.password, safe='')}@127.0.0.1:{server.port}?max_retries=0&timeout=2",
        )
        yield server, api


def _hook() -> Any:
    from airflow_mlserver.hooks.mlserver import MLServerHook

    return MLServerHook(mlserver_conn_id="mlserver_outage")


def _trigger(execution_id: str, **kwargs: Any) -> Any:
    from airflow_mlserver.triggers.batch import MLServerBatchTrigger

    return MLServerBatchTrigger(
        mlserver_conn_id="mlserver_outage", service_name="outage", service_version="v1",
        execution_ids=[execution_id], poll_interval=0.2, **kwargs,
    )  # fmt: skip


def _events(trigger: Any, timeout: float = 90) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


def test_the_trigger_against_a_stopped_server_ends_with_the_last_error(
    outage_server: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    server, api = outage_server
    execution_id = api.start_batch("outage", "v1", [{"x": 30.0}], 1)
    server.stop()
    started = time.monotonic()
    (event,) = _events(_trigger(execution_id, unreachable_timeout=2))
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 8, elapsed
    assert (event["status"], event["unreachable"]) == ("error", True)
    assert event["message"].startswith("The server was not readable for 2.")
    assert (
        f"while waiting for batch execution {execution_id} of web service 'outage' version 'v1'"
        in (event["message"])
    )
    assert "Last error: Could not log in (POST /login, tried " in event["message"]  # the client's own message
    assert "and that the server is running" in event["message"]
    assert capfd.readouterr().out.count("Batch state unknown") == 1  # once a minute, not once a poll


def test_the_in_worker_wait_against_a_stopped_server_fails_with_the_last_error(outage_server: Any) -> None:
    server, api = outage_server
    execution_id = api.start_batch("outage", "v1", [{"x": 30.0}], 1)
    server.stop()
    log, started = Lines(), time.monotonic()
    with pytest.raises(MLServerConnectionError) as raised:
        wait_for_executions(
            _hook(), "outage", "v1", [execution_id], 0.2, None, lambda statuses: None,
            unreachable_timeout=2, log=log,
        )  # fmt: skip
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 8, elapsed
    assert str(raised.value).startswith("The server was not readable for 2.")
    assert "Last error: Could not log in (POST /login, tried " in str(raised.value)
    assert isinstance(raised.value.__cause__, MLServerConnectionError)
    assert len(log.lines) == 2 and log.lines[0][1].startswith("Batch state unknown")
    assert log.lines[1][1].startswith("Last error: Could not log in (POST /login, tried ")


def _restart_after(server: Any, seconds: float) -> threading.Thread:
    """Start ``server`` again (same port and data directory) ``seconds`` from now, in a thread."""

    def restart() -> None:
        time.sleep(seconds)
        server.start()

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("waiter", ["trigger", "in-worker"])
def test_a_wait_survives_a_short_outage_when_the_server_comes_back(
    outage_server: Any, waiter: str, capfd: pytest.CaptureFixture[str]
) -> None:
    server, api = outage_server
    port = server.port
    execution_id = api.start_batch("outage", "v1", [{"x": 0.3}] * 4, 1)
    server.stop()
    restart = _restart_after(server, 1.5)
    if waiter == "trigger":
        (event,) = _events(_trigger(execution_id, unreachable_timeout=60))
        assert (event["status"], event["complete"]) == ("complete", [execution_id])
        out = capfd.readouterr().out
        assert "Batch state unknown" in out and "The server is readable again after" in out
    else:
        log = Lines()
        statuses = wait_for_executions(
            _hook(),
            "outage",
            "v1",
            [execution_id],
            0.2,
            None,
            lambda s: None,
            unreachable_timeout=60,
            log=log,
        )
        assert [s.state for s in statuses] == ["Complete"]
        assert [level for level, _ in log.lines] == ["warning", "warning", "info"]
        assert log.lines[2][1].startswith("The server is readable again after")
    restart.join()
    assert server.port == port and os.path.isdir(server.data_dir)
    assert api.status("outage", "v1", execution_id)["completedItemCount"] == 4
