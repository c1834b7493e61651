"""The client's flows with no socket: canned answers in, the next request (or the result, or the error) out.

Each API call is a generator of requests (see ``airflow_mlserver.client.calls``); these tests play the
server's part by hand, so that every rule of a call (what it sends, how it authenticates, what it retries,
what an answer means) is checked exactly, in isolation from HTTP and timing.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import tenacity
import urllib3

from airflow_mlserver.client import auth as auth_module
from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.calls import Calls
from airflow_mlserver.client.errors import (
    ExecutionNotFoundError,
    MLServerApiError,
    MLServerAuthError,
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
    ServiceExistsError,
)
from airflow_mlserver.client.models import ServiceDefinition, TokenInfo, WebService
from airflow_mlserver.client.protocol import (
    AmbiguousSend,
    Answer,
    Flow,
    RetryPolicy,
    Sleep,
    Transient,
    Wire,
    check_status,
    classified,
)
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.sync import requests_failure
from airflow_mlserver.client.transport import failure_sentences, transport_failure

SERVICE = {
    "name": "svc",
    "version": "1",
    "inputParameterDefinitions": [{"name": "x", "type": "integer"}],
    "outputParameterDefinitions": [{"name": "y", "type": "integer"}],
}
LOG = logging.getLogger("test-client-flows")
SETTINGS = ConnectionSettings(conn_id="ml", base_url="http://ml:12800", access_token="tok", max_retries=1)


@pytest.fixture(autouse=True)
def no_shared_tokens() -> Iterator[None]:
    auth_module.TOKENS.clear()
    yield
    auth_module.TOKENS.clear()


def calls(**settings: Any) -> Calls:
    values: dict[str, Any] = {"conn_id": "ml", "base_url": "http://ml:12800", "login": "u", "password": "pw"}
    values.update(settings)
    return Calls(Auth(ConnectionSettings(**values), LOG), LOG)


def token(value: str, refresh: str | None = "r1", expires_in: float = 3600) -> Answer:
    body = {"access_token": value, "refresh_token": refresh, "expires_in": expires_in}
    return Answer(200, {}, value=body)


def ok(value: Any) -> Answer:
    return Answer(200, {}, value=value)


def error(status: int, message: str) -> Answer:
    return Answer(status, {}, error_message=message)


class Server:
    """Plays the server's part: each ``expect`` checks the flow's next request and hands it an outcome."""

    def __init__(self, flow: Flow[Any]) -> None:
        self.flow = flow
        self.step: Wire | Sleep = next(flow)
        self.result: Any = None
        self.done = False

    def expect(self, method: str, path: str, outcome: Answer | AmbiguousSend | None) -> Wire:
        step = self.step
        assert isinstance(step, Wire), f"expected {method} {path}, the flow asked for {step}"
        assert (step.spec.method, step.spec.path) == (method, path), step.spec
        self._give(outcome)
        return step

    def expect_sleep(self) -> float:
        step = self.step
        assert isinstance(step, Sleep), step
        self._give(None)
        return step.seconds

    def _give(self, outcome: Answer | AmbiguousSend | None) -> None:
        try:
            if isinstance(outcome, AmbiguousSend):
                self.step = self.flow.throw(outcome)
            else:
                self.step = self.flow.send(outcome)
        except StopIteration as stop:
            self.result, self.done = stop.value, True


# --- authentication --------------------------------------------------------------------------------------


def test_first_call_logs_in_then_sends_the_token() -> None:
    c = calls()
    server = Server(c.get_service("svc", "1"))
    login = server.expect("POST", "/login", token("t1"))
    assert json.loads(login.spec.body or b"") == {"username": "u", "password": "pw"}
    assert "Authorization" not in login.headers
    get = server.expect("GET", "/services/svc/1", ok([SERVICE]))
    assert get.headers["Authorization"] == "Bearer t1"
    assert server.done and server.result == WebService.from_api(SERVICE)
    assert c.auth.take_secrets() == ["pw", "t1", "r1"]  # the masker hears of each secret before any log


def test_a_401_logs_in_again_once_and_resends() -> None:
    c = calls()
    c.auth.token = TokenInfo(access_token="stale")
    server = Server(c.list_services())
    first = server.expect("GET", "/services", error(401, "expired"))
    assert first.headers["Authorization"] == "Bearer stale"
    server.expect("POST", "/login", token("fresh"))
    again = server.expect("GET", "/services", ok([]))
    assert again.headers["Authorization"] == "Bearer fresh"
    assert server.done and server.result == []


def test_calls_answered_401_together_renew_the_token_once() -> None:
    """A thousand triggers share one client: when the server forgets its token, the first call answered 401 logs
    in again; the others wait for it in short sleeps and resend with its token, without logging in."""
    c = calls()
    c.auth.token = TokenInfo(access_token="stale")
    a, b = Server(c.list_services()), Server(c.list_services())
    a.expect("GET", "/services", error(401, "forgotten"))
    b.expect("GET", "/services", error(401, "forgotten"))  # while a logs in
    assert b.expect_sleep() == pytest.approx(0.05)  # b waits
    a.expect("POST", "/login", token("fresh"))
    assert a.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer fresh"
    assert b.expect_sleep() == pytest.approx(0.05)  # b looks again: renewed
    assert b.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer fresh"
    assert a.done and b.done
    # a call answered 401 to a token renewed meanwhile resends with the new one at once
    c.auth.token = TokenInfo(access_token="stale")
    stale = Server(c.list_services())  # sent with the stale token ...
    c.auth.token = auth_module.TOKENS[c.auth.key]  # ... which another call renews before the 401 comes back
    assert stale.expect("GET", "/services", error(401, "old")).headers["Authorization"] == "Bearer stale"
    assert stale.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer fresh"


def test_a_renewal_that_fails_lets_the_next_call_renew() -> None:
    c = calls()
    c.auth.token = TokenInfo(access_token="stale")
    a, b = Server(c.list_services()), Server(c.list_services())
    a.expect("GET", "/services", error(401, "forgotten"))
    with pytest.raises(MLServerAuthError, match="refused the login"):
        a.expect("POST", "/login", error(403, "locked"))
    assert not c.auth.renewing
    b.expect("GET", "/services", error(401, "forgotten"))
    b.expect("POST", "/login", token("fresh"))  # no wait: nobody renews now
    assert b.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer fresh"


def test_a_second_401_is_an_auth_error_naming_the_user() -> None:
    c = calls()
    c.auth.token = TokenInfo(access_token="stale")
    server = Server(c.list_services())
    server.expect("GET", "/services", error(401, "no"))
    server.expect("POST", "/login", token("fresh"))
    with pytest.raises(MLServerAuthError, match=r"even with a fresh token .*user 'u' may use this server"):
        server.expect("GET", "/services", error(401, "still no"))


def test_a_rejected_bearer_token_is_not_retried() -> None:
    c = calls(login=None, password=None, access_token="tok")
    server = Server(c.list_services())
    with pytest.raises(MLServerAuthError, match="rejected the bearer token of connection 'ml'"):
        server.expect("GET", "/services", error(401, "bad token"))


def test_refresh_ahead_of_expiry_and_login_when_refresh_fails() -> None:
    c = calls()
    c.auth.token = TokenInfo(access_token="old", refresh_token="r0", expires_at=0.0, lifetime=3600)
    server = Server(c.list_services())
    refresh = server.expect("POST", "/login/refreshToken", error(400, "refresh token expired"))
    assert json.loads(refresh.spec.body or b"") == {"refreshToken": "r0"}
    server.expect("POST", "/login", token("new"))
    assert server.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer new"


def test_wrong_password_names_the_connection() -> None:
    server = Server(calls().list_services())
    with pytest.raises(
        MLServerAuthError,
        match=r"refused the login of user 'u': a wrong user name or password .*connection 'ml'",
    ):
        server.expect("POST", "/login", error(401, "bad credentials"))


def test_clients_of_one_connection_share_the_token() -> None:
    first, second = calls(), calls()
    server = Server(first.list_services())
    server.expect("POST", "/login", token("shared"))
    server.expect("GET", "/services", ok([]))
    assert not second.auth.login_due()
    other = Server(second.list_services())  # no login: adopts the shared token
    assert other.expect("GET", "/services", ok([])).headers["Authorization"] == "Bearer shared"


# --- error answers ---------------------------------------------------------------------------------------


def test_an_unknown_execution_is_execution_not_found() -> None:
    c = calls(login=None, password=None, access_token="tok")
    server = Server(c.get_batch("svc", "1", "e-1", False))
    with pytest.raises(
        ExecutionNotFoundError, match="Batch execution 'e-1' of web service 'svc' version '1'"
    ):
        server.expect("GET", "/api/svc/1/batch/e-1", error(404, "not found"))


def test_publish_over_an_existing_version_patches_only_with_replace() -> None:
    definition = ServiceDefinition("y = x", {"x": "integer"}, {"y": "integer"})
    c = calls(login=None, password=None, access_token="tok")
    refused = Server(c.publish_service("svc", "1", definition, replace=False))
    with pytest.raises(ServiceExistsError, match="exists already"):
        refused.expect("POST", "/services/svc/1", error(403, "exists"))
    server = Server(c.publish_service("svc", "1", definition, replace=True))
    post = server.expect("POST", "/services/svc/1", error(403, "exists"))
    assert json.loads(post.spec.body or b"")["inputParameterDefinitions"] == [
        {"name": "x", "type": "integer"}
    ]
    server.expect("PATCH", "/services/svc/1", ok("/api/svc/1"))
    server.expect("GET", "/services/svc/1", ok([SERVICE]))
    assert server.done and server.result.name == "svc"


# --- starting a batch: never twice silently, never another's (the rule: tests/test_reconcile.py) -------------


def start(c: Calls, key: str = "k-1") -> Server:
    return Server(c.send_start("svc", "1", [{"x": 1}, {"x": 2}], 5, key))


def test_start_sends_the_checked_records_with_its_idempotency_key() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    post = server.expect("POST", "/api/svc/1/batch", ok({"batchExecutionId": "new"}))
    assert post.spec.params == (("parallelCount", "5"),) and not post.spec.idempotent
    assert json.loads(post.spec.body or b"") == [{"x": 1}, {"x": 2}]
    assert post.headers["Idempotency-Key"] == "k-1" and post.headers["Authorization"] == "Bearer tok"
    assert server.done and server.result == ("new", False)


def test_a_start_sent_again_with_its_key_says_when_the_server_answers_the_first_send() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    replayed = Answer(200, {"Idempotent-Replayed": "true"}, value={"BatchExecutionId": "first"})
    server.expect("POST", "/api/svc/1/batch", replayed)
    assert server.done and server.result == ("first", True)


def test_an_ambiguous_start_is_left_to_the_rule() -> None:
    """The flow sends once: a lost answer goes up to the starter, which applies the reconciliation rule."""
    server = start(calls(login=None, password=None, access_token="tok"))
    with pytest.raises(AmbiguousSend, match="no answer in time"):
        server.expect("POST", "/api/svc/1/batch", AmbiguousSend("no answer in time"))


@pytest.mark.parametrize(
    ("headers", "honoured"),
    [({"X-Idempotency-Keys": "honoured"}, True), ({"x-idempotency-keys": "Honoured "}, True), ({}, False)],
)
def test_whether_a_server_honours_keys_is_read_from_its_answers(
    headers: dict[str, str], honoured: bool
) -> None:
    c = calls(
        login=None, password=None, access_token="tok", base_url=f"http://keys-{abs(hash(str(headers)))}:1"
    )
    assert c.honours_keys() is None  # nothing said yet
    server = Server(c.list_batch_executions("svc", "1"))
    server.expect("GET", "/api/svc/1/batch", Answer(200, headers, value=["a"]))
    assert server.done and c.honours_keys() is honoured


def test_the_records_of_a_start_are_checked_before_anything_is_sent() -> None:
    c = calls(login=None, password=None, access_token="tok")
    with pytest.raises(MLServerConfigError, match="parallel_count must be a whole number from 1 to 100"):
        next(c.batch_records("svc", "1", [{"x": 1}], 0, WebService.from_api(SERVICE), "error"))
    flow = c.batch_records("svc", "1", [{"x": 1}], 3, WebService.from_api(SERVICE), "error")
    with pytest.raises(StopIteration) as done:
        next(flow)  # the service is known: no request at all
    assert done.value.value[1] == [{"x": 1}]


# --- retry classification -------------------------------------------------------------------------------


def wire(idempotent: bool) -> Wire:
    c = calls(login=None, password=None, access_token="tok")
    step = (Server(c.list_services()) if idempotent else start(c)).step
    assert isinstance(step, Wire) and step.spec.idempotent is idempotent
    return step


def test_status_classification() -> None:
    check_status(wire(True), 500, {}, "boom")  # not retried: the flow maps it to an API error
    with pytest.raises(Transient) as raised:
        check_status(wire(True), 503, {"Retry-After": "7"}, "busy")
    assert raised.value.retry_after == 7.0 and raised.value.status == 503
    with pytest.raises(Transient):
        check_status(wire(False), 429, {}, "slow down")  # not processed: safe to resend even a start
    with pytest.raises(AmbiguousSend, match="HTTP 502"):
        check_status(wire(False), 502, {}, "bad gateway")  # may have been processed: the flow reconciles


def test_transport_failure_classification() -> None:
    def never_connected(cause: Exception) -> requests.exceptions.ConnectionError:
        return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/login", cause))  # type: ignore[arg-type]

    refused = never_connected(urllib3.exceptions.NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    unknown_host = never_connected(urllib3.exceptions.NameResolutionError("nohost", None, OSError("unknown")))  # type: ignore[arg-type]
    timeout = requests.exceptions.ReadTimeout("read timed out")
    for unreached in (refused, unknown_host, requests.exceptions.ConnectTimeout("no connection in time")):
        with pytest.raises(Transient) as raised, classified(wire(False), requests_failure):
            raise unreached
        assert raised.value.sent is False  # never reached the server: even a start may be resent
    with pytest.raises(AmbiguousSend), classified(wire(False), requests_failure):
        raise requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted."))
    with pytest.raises(AmbiguousSend), classified(wire(False), requests_failure):
        raise timeout
    with pytest.raises(Transient) as raised, classified(wire(True), requests_failure):
        raise timeout
    assert raised.value.sent is True
    with pytest.raises(KeyError), classified(wire(True), requests_failure):
        raise KeyError("a bug, not a transport failure")


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner  # as a library raises it: ``raise Outer(...) from inner``
    return outer


def _library_failures() -> list[tuple[BaseException, str, bool]]:
    """Transport failures as requests/urllib3 and aiohttp raise them: (exception, kind, may have been sent)."""
    import http.client
    import socket

    import aiohttp

    def via_requests(cause: BaseException) -> BaseException:
        return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/login", cause))  # type: ignore[arg-type]

    refused = _wrapped(
        urllib3.exceptions.NewConnectionError(None, "refused"), ConnectionRefusedError(111, "x")
    )  # type: ignore[arg-type]
    dns = socket.gaierror(-2, "Name or service not known")
    unknown = _wrapped(urllib3.exceptions.NameResolutionError("h", None, dns), dns)  # type: ignore[arg-type]
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    return [
        (via_requests(refused), "refused", False),
        (via_requests(unknown), "unknown_host", False),
        (
            requests.exceptions.ConnectTimeout(urllib3.exceptions.ConnectTimeoutError(None, "x")),
            "connect_timeout",
            False,
        ),
        (requests.exceptions.ReadTimeout("x"), "read_timeout", True),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("x"))
            ),
            "closed",
            True,
        ),
        (requests.exceptions.ChunkedEncodingError("x"), "cut_off", True),
        (aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "x")), "refused", False),
        (aiohttp.ClientConnectorDNSError(key, dns), "unknown_host", False),
        (aiohttp.ConnectionTimeoutError("x"), "connect_timeout", False),
        (aiohttp.SocketTimeoutError("x"), "read_timeout", True),
        (TimeoutError(), "read_timeout", True),
        (aiohttp.ServerDisconnectedError(), "closed", True),
        (aiohttp.ClientPayloadError("x"), "cut_off", True),
        (aiohttp.ClientConnectorError(key, OSError(101, "Network is unreachable")), "unreachable", False),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "other", True),
    ]


def test_transport_failures_are_read_the_same_from_either_library() -> None:
    for exc, kind, sent in _library_failures():
        failure = transport_failure(exc, 10, 60)
        assert failure is not None, exc
        assert (failure.kind, failure.sent) == (kind, sent), (exc, failure)
        cause, fix = failure_sentences(failure, "http://ml:1", "this connection")
        for text in (failure.detail, cause, fix):
            assert not [
                w for w in ("HTTPConnection", "urllib3", "Errno", "object at 0x", "Max retries") if w in text
            ]
    assert transport_failure(KeyError("a bug")) is None
    assert transport_failure(requests.exceptions.ReadTimeout("x"), 10, 60).detail == "no answer within 60 s"  # type: ignore[union-attr]


def test_retry_policy_resends_transient_failures_then_stops() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise Transient("HTTP 503: busy", sent=True, status=503, retry_after=0)
        return "ok"

    policy = RetryPolicy(max_retries=2, wait=0.0, wait_max=0.0)
    assert tenacity.Retrying(**policy.tenacity_args(SETTINGS, wire(True).spec, LOG))(flaky) == "ok"
    attempts.clear()
    spent = RetryPolicy(1, 0.0, 0.0).tenacity_args(SETTINGS, wire(True).spec, LOG)
    with pytest.raises(MLServerApiError, match=re.escape("answered 503 (HTTP 503: busy) to all 2 attempts")):
        tenacity.Retrying(**spent)(flaky)
    assert len(attempts) == 2


def test_exhausted_connection_error_names_the_url() -> None:
    from airflow_mlserver.client.protocol import exhausted_error

    settings = ConnectionSettings(conn_id="ml", base_url="http://ml:1", access_token="t")
    err = exhausted_error(settings, wire(True).spec, Transient("cannot connect", sent=False), 3)
    assert isinstance(err, MLServerConnectionError)
    assert str(err) == (
        "Could not list the web services (GET /services, tried 3 times): cannot connect at http://ml:1. Check the "
        "host and port of connection 'ml', and that the server is running."
    )


def run_policy(policy: RetryPolicy, failure_at: Any) -> tuple[int, float, Exception]:
    """Attempts, seconds and the final error of a request that fails with ``failure_at(attempt, seconds)``."""
    attempts: list[int] = []
    began = time.monotonic()

    def attempt() -> None:
        attempts.append(1)
        raise failure_at(len(attempts), time.monotonic() - began)

    with pytest.raises(MLServerError) as raised:
        tenacity.Retrying(**policy.tenacity_args(SETTINGS, wire(True).spec, LOG))(attempt)
    return len(attempts), time.monotonic() - began, raised.value


def refused(attempt: int = 0, seconds: float = 0.0) -> Transient:
    return Transient("connection failed (refused)", sent=False)


def busy(attempt: int = 0, seconds: float = 0.0) -> Transient:
    return Transient("HTTP 503: busy", sent=True, status=503)


def test_failures_that_never_reach_the_server_are_retried_for_a_time_not_a_count() -> None:
    attempts, seconds, error = run_policy(
        RetryPolicy(50, wait=0.01, wait_max=0.02, unreached_for=0.4), refused
    )
    assert 0.4 <= seconds < 0.9 and 5 < attempts < 51, (attempts, seconds)
    assert isinstance(error, MLServerConnectionError)
    assert f"(GET /services, tried {attempts} times): connection failed (refused) at http://" in str(error)
    # the last wait is cut to what is left of the budget: a 10 s backoff still ends at the budget
    attempts, seconds, _ = run_policy(RetryPolicy(50, wait=10.0, wait_max=30.0, unreached_for=0.3), refused)
    assert attempts == 2 and 0.3 <= seconds < 0.8, (attempts, seconds)


def test_a_busy_server_is_retried_every_time_whatever_the_unreached_budget() -> None:
    attempts, seconds, error = run_policy(RetryPolicy(8, wait=0.05, wait_max=0.1, unreached_for=0.2), busy)
    assert attempts == 9 and seconds > 0.5, (attempts, seconds)
    assert isinstance(error, MLServerApiError) and "to all 9 attempts" in str(error)


def test_an_answer_from_the_server_starts_the_unreached_budget_again() -> None:
    answered: list[float] = []

    def down_up_down(attempt: int, seconds: float) -> Transient:
        if not answered and seconds >= 0.25:
            answered.append(seconds)
            return busy()  # the server is back for a moment
        return refused()

    policy = RetryPolicy(1000, wait=0.01, wait_max=0.01, unreached_for=0.3)
    _, seconds, error = run_policy(policy, down_up_down)
    assert 0.55 <= seconds < 1.0, seconds  # 0.25 s refused, an answer, then a fresh 0.3 s of refusals
    assert isinstance(error, MLServerConnectionError)


# --- no Airflow in the client -----------------------------------------------------------------------------


def test_client_imports_without_airflow() -> None:
    """Every module of the client imports (and a client is built) with ``airflow`` made unimportable."""
    script = """
import importlib, pkgutil, sys

class NoAirflow:
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, NoAirflow())
import airflow_mlserver.client as client
names = [m.name for m in pkgutil.iter_modules(client.__path__, "airflow_mlserver.client.")]
for name in names:
    importlib.import_module(name)
from airflow_mlserver.client import ConnectionSettings, MLServerClient
MLServerClient(ConnectionSettings(conn_id="x", base_url="http://127.0.0.1:9", access_token="t"))
assert not any(m == "airflow" or m.startswith("airflow.") for m in sys.modules), "airflow was imported"
print(len(names), "modules")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) >= 10
