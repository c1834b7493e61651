"""The hook against the local server over real HTTP: every call, both auth modes, expiring tokens, faults."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest

from airflow_mlserver.client.models import BatchStatus, TokenInfo
from airflow_mlserver.exceptions import MLServerAuthError
from airflow_mlserver.hooks.mlserver import ConnectionSettings, MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, polled_once, wait_for

CONN_ID = "mlserver_test"


def use_connection(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    """Airflow 3 reads ``AIRFLOW_CONN_*`` through the task SDK's env-var secrets backend, also outside a task."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", uri)


def server_uri(server: LocalMLServer, query: str = "") -> str:
    return f"mlserver://{server.username}:{server.password}@127.0.0.1:{server.port}" + (
        f"?{query}" if query else ""
    )


def wait_finished(
    hook: MLServerHook, name: str, version: str, execution_id: str, timeout: float = 120
) -> BatchStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_batch(name, version, execution_id)
        if status.is_finished:
            return status
        time.sleep(0.2)
    raise AssertionError(f"execution {execution_id} did not finish in {timeout} s")


@pytest.fixture
def hook(mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MLServerHook]:
    use_connection(monkeypatch, server_uri(mlserver))
    hook = MLServerHook(CONN_ID, retry_wait=0.05, retry_wait_max=0.5)
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def add_service(api: Api) -> str:
    """``y = x + 1`` that also writes ``out.txt``; version 1.0 and a later 2.0."""
    code = "y = x + 1\nprint('row', x)\nopen('out.txt', 'w').write(str(y))"
    for version in ("1.0", "2.0"):
        api.publish("hookadd", version, code, {"x": "numeric"}, {"y": "numeric"}, files=["out.txt"])
    return "hookadd"


# --- connection and services -------------------------------------------------------------------------------


def test_test_connection(hook: MLServerHook, mlserver: LocalMLServer) -> None:
    assert hook.test_connection() == (
        True,
        f"Connected to the Machine Learning Server at http://127.0.0.1:{mlserver.port} as 'admin': status pass.",
    )


def test_connection_uri_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "mlserver://admin:pw@localhost:12800": "http://localhost:12800",
        "mlserver+https://admin:pw@ml.example.com": "https://ml.example.com:443",
        "mlserver://admin:pw@ml.example.com:8443/https": "https://ml.example.com:8443",
        "mlserver://admin:pw@https%3A%2F%2Fml.example.com%2Fbase": "https://ml.example.com:443/base",
        "mlserver://admin:pw@localhost": "http://localhost:12800",
    }
    for uri, expected in cases.items():
        use_connection(monkeypatch, uri)
        assert MLServerHook(CONN_ID).settings.base_url == expected, uri
    use_connection(monkeypatch, "mlserver://h?verify=false&timeout=5&max_retries=2&access_token=tok12345")
    settings = MLServerHook(CONN_ID).settings
    assert (settings.verify, settings.timeout, settings.max_retries) == (False, 5.0, 2)
    assert settings.bearer_token == "tok12345"
    assert "tok12345" not in repr(settings)


def test_connection_form_as_airflow_reads_it() -> None:
    """Airflow's UI builds the form from the provider info (without importing the hook): read it the same way."""
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    behaviour = manager.field_behaviours["mlserver"]
    assert behaviour["relabeling"]["host"] == "Server"
    assert behaviour["placeholders"]["host"].startswith("localhost")
    widgets = {
        name: w for name, w in manager.connection_form_widgets.items() if name.startswith("extra__mlserver__")
    }
    # no field for a token: Airflow would show its default as *** and save that (a token goes in Password)
    assert set(widgets) == {f"extra__mlserver__{f}" for f in ("verify", "timeout", "max_retries")}
    assert widgets["extra__mlserver__timeout"].field["schema"]["title"] == "Timeout (seconds)"


def test_form_extras_left_empty_mean_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A form stores fields the user left empty as null or blank: those are the defaults, not errors."""
    extra = '{"verify": "", "timeout": null, "max_retries": null, "access_token": ""}'
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps({"conn_type": "mlserver", "host": "h", "login": "u", "password": "p", "extra": extra}),
    )
    settings = MLServerHook(CONN_ID).settings
    assert (settings.verify, settings.timeout, settings.max_retries, settings.access_token) == (
        True,
        60.0,
        8,
        None,
    )


def test_services(hook: MLServerHook, add_service: str) -> None:
    names = {(s.name, s.version) for s in hook.list_services()}
    assert {(add_service, "1.0"), (add_service, "2.0")} <= names
    latest = hook.get_service(add_service)
    assert latest.version == "2.0"
    first = hook.get_service(add_service, "1.0")
    assert [(p.name, p.type) for p in first.inputs] == [("x", "numeric")]
    assert first.output_file_names == ("out.txt",)
    assert first.published_by == "admin"
    swagger = hook.get_swagger(add_service, "1.0")
    assert swagger["swagger"] == "2.0"
    assert "/api/hookadd/1.0/batch" in swagger["paths"]


def test_publish_replace_and_delete(hook: MLServerHook) -> None:
    hook.delete_service("hookpub", "1", missing_ok=True)
    service = hook.publish_service(
        "hookpub", "1", "z = a * 2", inputs={"a": "integer"}, outputs={"z": "integer"}, description="double"
    )
    assert (service.name, service.version, service.description) == ("hookpub", "1", "double")
    assert hook.consume("hookpub", "1", {"a": 4}).outputs == {"z": 8}
    replaced = hook.publish_service(
        "hookpub", "1", "z = a * 3", inputs={"a": "integer"}, outputs={"z": "integer"}, replace=True
    )
    assert replaced.version == "1"
    assert hook.consume("hookpub", "1", {"a": 4}).outputs == {"z": 12}
    generated = hook.publish_service(
        "hookpub", None, "z = a", inputs={"a": "integer"}, outputs={"z": "integer"}
    )
    assert generated.version not in ("", "1")
    assert hook.delete_service("hookpub", generated.version) is True
    assert hook.delete_service("hookpub", "1") is True
    assert hook.delete_service("hookpub", "1", missing_ok=True) is False


def test_consume(hook: MLServerHook, add_service: str) -> None:
    result = hook.consume(add_service, "1.0", {"x": 41})
    assert result.success
    assert result.outputs == {"y": 42.0}
    assert result.console_output == "row 41.0\n"
    assert result.output_files == {"out.txt": "NDIuMA=="}


# --- batch -------------------------------------------------------------------------------------------------


def test_batch_every_call(hook: MLServerHook, add_service: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [float(i) for i in range(50)], "note": ["dropped"] * 50})
    execution_id = hook.start_batch(add_service, "1.0", frame, parallel_count=5, extra_columns="drop")
    assert execution_id in hook.list_batch_executions(add_service, "1.0")
    status = wait_finished(hook, add_service, "1.0", execution_id)
    assert (status.is_complete, status.total, status.completed, status.results) == (True, 50, 50, None)
    full = hook.get_batch(add_service, "1.0", execution_id, partial=True)
    assert full.results is not None and len(full.results) == 50
    streamed = list(hook.iter_batch_results(add_service, "1.0", execution_id))
    assert [r.outputs["y"] for r in streamed] == [i + 1.0 for i in range(50)]
    assert [r.index for r in streamed] == list(range(50))
    assert streamed == list(full.results)
    assert hook.list_artifacts(add_service, "1.0", execution_id, 7) == ["out.txt"]
    with hook.open_artifact(add_service, "1.0", execution_id, 7, "out.txt") as artifact:
        assert artifact.read() == b"8.0"
    target = tmp_path / "out.txt"
    assert hook.download_artifact(add_service, "1.0", execution_id, 9, "out.txt", target) == 4
    assert target.read_bytes() == b"10.0"
    # Canceling a finished execution changes nothing.
    assert hook.cancel_batch(add_service, "1.0", execution_id).is_complete


def test_cancel_running_batch(hook: MLServerHook, api: Api) -> None:
    api.publish("hookslow", "1", "import time\ntime.sleep(0.2)\ny = x", {"x": "integer"}, {"y": "integer"})
    execution_id = hook.start_batch("hookslow", "1", {"x": list(range(100))}, parallel_count=1)
    status = hook.cancel_batch("hookslow", "1", execution_id)
    assert status.is_canceled and status.is_finished
    # the record in flight (if any) has finished and is committed; no lane took another group
    wait_for("the workers to be idle", api.workers_idle, timeout=30, interval=0.05)
    after = hook.get_batch("hookslow", "1", execution_id)
    assert after.is_canceled and after.completed < 100


def test_status_poll_costs_constant_bytes(hook: MLServerHook, api: Api) -> None:
    api.publish("hookpoll", "1", "y = x", {"x": "integer"}, {"y": "integer"})
    costs = []
    for size in (10, 3000):
        execution_id = hook.start_batch("hookpoll", "1", {"x": list(range(size))}, parallel_count=50)
        wait_finished(hook, "hookpoll", "1", execution_id)
        before = hook.bytes_received
        hook.get_batch("hookpoll", "1", execution_id)
        costs.append(hook.bytes_received - before)
    assert costs[0] < 400 and abs(costs[1] - costs[0]) <= 8, (
        costs
    )  # only the head is read (ids are equally long)


def test_async_status_and_cancel(hook: MLServerHook, api: Api) -> None:
    api.publish("hookasync", "1", "import time\ntime.sleep(0.1)\ny = x", {"x": "integer"}, {"y": "integer"})
    execution_id = hook.start_batch("hookasync", "1", [{"x": i} for i in range(40)], parallel_count=1)

    async def poll_then_cancel() -> tuple[BatchStatus, BatchStatus]:
        fresh = MLServerHook(CONN_ID)  # reads the connection with the async API
        first = await fresh.async_get_batch("hookasync", "1", execution_id)
        canceled = await fresh.async_cancel_batch("hookasync", "1", execution_id)
        await fresh.aclose()
        return first, canceled

    first, canceled = asyncio.run(poll_then_cancel())
    assert first.total == 40 and not first.is_finished and first.results is None
    assert canceled.is_canceled


# --- authentication ----------------------------------------------------------------------------------------


def test_bearer_token_modes(
    mlserver: LocalMLServer, api: Api, add_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = api.login(mlserver.username, mlserver.password)["access_token"]
    use_connection(monkeypatch, f"mlserver://127.0.0.1:{mlserver.port}?access_token={token}")
    assert MLServerHook(CONN_ID).get_service(add_service, "1.0").name == add_service
    use_connection(
        monkeypatch, f"mlserver://:{token}@127.0.0.1:{mlserver.port}"
    )  # password as token, no login
    hook = MLServerHook(CONN_ID)
    assert hook.consume(add_service, "1.0", {"x": 1}).outputs == {"y": 2.0}
    assert hook.test_connection()[1].endswith("with a bearer token: status pass.")


def test_401_reauthenticates_once(hook: MLServerHook, add_service: str) -> None:
    hook.get_service(add_service, "1.0")
    hook.get_conn().auth.token = TokenInfo(
        access_token="revoked-or-unknown-token", refresh_token=None, expires_at=None
    )
    assert hook.get_service(add_service, "1.0").name == add_service
    assert (
        hook.get_conn().auth.token is not None
        and hook.get_conn().auth.token.access_token != "revoked-or-unknown-token"
    )


def test_token_expiry_during_long_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Tokens live 3 s; a batch polled for longer never surfaces an auth error, and refreshes happen."""
    with LocalMLServer(tmp_path, workers=2, extra_args=["--token-ttl", "3"]) as server:
        Api(server).publish(
            "hookttl", "1", "import time\ntime.sleep(0.05)\ny = x", {"x": "integer"}, {"y": "integer"}
        )
        use_connection(monkeypatch, server_uri(server))
        hook = MLServerHook(CONN_ID, retry_wait=0.05)
        execution_id = hook.start_batch("hookttl", "1", {"x": list(range(150))}, parallel_count=1)
        tokens = set()
        started = time.monotonic()
        while True:
            status = hook.get_batch("hookttl", "1", execution_id)
            assert hook.get_conn().auth.token is not None
            tokens.add(hook.get_conn().auth.token.access_token)
            if status.is_finished and time.monotonic() - started > 7:
                break
            time.sleep(0.25)
        asyncio.run(polled_once(hook, "hookttl", "1", execution_id))
        assert status.is_complete
        assert len(tokens) >= 3  # renewed ahead of expiry, repeatedly
        assert len(list(hook.iter_batch_results("hookttl", "1", execution_id))) == 150
        out = capfd.readouterr().out
        assert "answered 401" not in out  # refreshed before expiry, never after a rejection


# --- faults ------------------------------------------------------------------------------------------------


def test_faulty_server_batch_completes_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = "503:0.3,reset:0.1,drop:0.05,delay:2s:0.1,seed:1"
    with LocalMLServer(tmp_path, workers=2, extra_args=["--faults", faults]) as server:
        use_connection(monkeypatch, server_uri(server, "max_retries=25"))
        hook = MLServerHook(CONN_ID, retry_wait=0.05, retry_wait_max=0.5)
        hook.publish_service("hookinc", "1", "y = x + 1", inputs={"x": "integer"}, outputs={"y": "integer"})
        execution_id = hook.start_batch("hookinc", "1", {"x": list(range(5000))}, parallel_count=100)
        status = wait_finished(hook, "hookinc", "1", execution_id, timeout=150)
        assert (status.is_complete, status.completed) == (True, 5000)
        outputs = [r.outputs["y"] for r in hook.iter_batch_results("hookinc", "1", execution_id)]
        assert outputs == list(range(1, 5001))  # every result, once, in order
        assert hook.list_batch_executions("hookinc", "1") == [execution_id]  # no second execution


@pytest.mark.parametrize(
    ("keys", "logged"),
    [("honoured", "sending it again with the same idempotency key"), ("ignored", "adopting execution")],
)
def test_ambiguous_start_adopts_the_created_execution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], keys: str, logged: str
) -> None:
    """Answers dropped after the server acted: each start still yields exactly one execution, whether the server
    answers a start sent again with its key, or the new execution's results show it is the start's."""
    faults = ["--faults", "drop:0.4,seed:3"] + (["--ignore-idempotency-keys"] if keys == "ignored" else [])
    with LocalMLServer(tmp_path, workers=1, extra_args=faults) as server:
        use_connection(monkeypatch, server_uri(server, "max_retries=30"))
        hook = MLServerHook(CONN_ID, retry_wait=0.01, retry_wait_max=0.05)
        hook.publish_service("hookdrop", "1", "y = x", inputs={"x": "integer"}, outputs={"y": "integer"})
        ids = [hook.start_batch("hookdrop", "1", [{"x": 1}], parallel_count=1) for _ in range(8)]
        assert len(set(ids)) == 8
        assert sorted(hook.list_batch_executions("hookdrop", "1")) == sorted(ids)
        assert logged in capfd.readouterr().out  # the hook logs through Airflow's structlog


def test_settings_from_connection_object() -> None:
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="x", conn_type="mlserver", host="https://h.example", login="u", password="secret"
    )
    assert ConnectionSettings.from_connection(conn, {}).base_url == "https://h.example:443"


def test_hooks_of_one_connection_share_one_login(
    mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of triggers on one connection must not log in (and mask new secrets) once each."""
    from airflow_mlserver.client import auth

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLSERVER_SHARED", f"mlserver://admin:{mlserver.password}@127.0.0.1:{mlserver.port}"
    )
    auth.TOKENS.clear()
    first, second = MLServerHook("mlserver_shared"), MLServerHook("mlserver_shared")
    first.list_services()
    second.list_services()
    assert first.get_conn().auth.token is not None
    assert second.get_conn().auth.token is first.get_conn().auth.token
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLSERVER_SHARED",
        f"mlserver://admin:not-{mlserver.password[::-1]}@127.0.0.1:{mlserver.port}",
    )
    with pytest.raises(MLServerAuthError):
        MLServerHook("mlserver_shared").list_services()  # other credentials never borrow that token


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy on loopback that forwards each request it is sent, and keeps their paths."""

    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        self.seen.append(target.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")
        }
        upstream.request(
            self.command, target.path + (f"?{target.query}" if target.query else ""), body, headers
        )
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = _forward


def test_environment_proxies_apply_and_netrc_never_replaces_the_token(
    mlserver: LocalMLServer, add_service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The environment is read once per session (as ``requests`` would read it for each request), by the sync
    driver and by the async one (a trigger's polls) alike."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password not-the-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    use_connection(monkeypatch, server_uri(mlserver))

    def calls() -> list[str]:
        """A sync call and an async poll, each from a new hook (a new session reads the environment)."""
        hook = MLServerHook(CONN_ID)
        execution_id = hook.start_batch(add_service, "1.0", [{"x": 1}], parallel_count=1)
        hook.close()
        assert asyncio.run(polled_once(MLServerHook(CONN_ID), add_service, "1.0", execution_id)).total == 1
        seen, _RecordingProxy.seen[:] = list(_RecordingProxy.seen), []
        return seen

    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        seen = calls()  # with a ~/.netrc entry, requests would send Basic auth instead of the token
        assert f"/api/{add_service}/1.0/batch" in seen  # the sync start
        assert any(path.startswith(f"/api/{add_service}/1.0/batch/") for path in seen)  # the async poll
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert calls() == []
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_client_on_its_own(mlserver: LocalMLServer, add_service: str) -> None:
    """The README's use of the client without Airflow: settings by hand, sync and async, closed by ``with``."""
    from airflow_mlserver.client import MLServerClient

    settings = ConnectionSettings(
        conn_id="plain", base_url=mlserver.url, login=mlserver.username, password=mlserver.password
    )
    with MLServerClient(settings) as client:
        execution_id = client.start_batch(add_service, "1.0", [{"x": 1}, {"x": 2}], parallel_count=2)
        deadline = time.monotonic() + 60
        while not client.get_batch(add_service, "1.0", execution_id).is_finished:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert [r.outputs for r in client.iter_batch_results(add_service, "1.0", execution_id)] == [
            {"y": 2.0},
            {"y": 3.0},
        ]

    async def poll() -> BatchStatus:
        async with MLServerClient(settings) as aclient:
            status = await aclient.async_get_batch(add_service, "1.0", execution_id)
            assert aclient.aio._session is not None and not aclient.aio._session.closed
        assert aclient.aio._session is None
        return status

    assert asyncio.run(poll()).is_complete
