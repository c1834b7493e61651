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
from airflow_mlserver.client.calls import Calls, artifact_spec
from airflow_mlserver.client.errors import (
    AmbiguousStartError,
    ExecutionNotFoundError,
    MalformedResponseError,
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
from airflow_mlserver.client.streaming import BatchAnswerParser, ErrorBodyReader, JsonReader
from airflow_mlserver.client.sync import requests_failure

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
    with pytest.raises(MLServerAuthError, match=r"refused the login of user 'u' .*connection 'ml'"):
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


# --- answers of the wrong shape: MalformedResponseError, never taken as they are ------------------------

NOT_THE_API = "The server does not follow the Machine Learning Server API."
BATCH_HEAD = {"state": "Running", "totalItemCount": 2, "completedItemCount": 0}
WRONG_SHAPES: dict[str, tuple[Any, str, str, Any, str]] = {
    "artifact names not strings": (
        lambda c: c.list_artifacts("svc", "1", "e", 0),
        "GET",
        "/api/svc/1/batch/e/0/files",
        [1, {"a": 1}],
        "The server's answer to GET /api/svc/1/batch/e/0/files is not a list of artifact file names: it holds 1 and "
        f"1 more. {NOT_THE_API}",
    ),
    "artifact name with a path": (
        lambda c: c.list_artifacts("svc", "1", "e", 0),
        "GET",
        "/api/svc/1/batch/e/0/files",
        ["out.txt", "../../etc/passwd"],
        "The server's answer to GET /api/svc/1/batch/e/0/files is not a list of artifact file names: it holds "
        f"'../../etc/passwd'. {NOT_THE_API}",
    ),
    "artifact listing an object": (
        lambda c: c.list_artifacts("svc", "1", "e", 0),
        "GET",
        "/api/svc/1/batch/e/0/files",
        {"files": ["out.txt"]},
        f"The server's answer to GET /api/svc/1/batch/e/0/files is a dict, not a list: {{'files': ['out.txt']}}. "
        f"{NOT_THE_API}",
    ),
    "execution ids not strings": (
        lambda c: c.list_batch_executions("svc", "1"),
        "GET",
        "/api/svc/1/batch",
        ["e-1", 7],
        f"The server's answer to GET /api/svc/1/batch is not a list of execution ids: it holds 7. {NOT_THE_API}",
    ),
    "an empty execution id": (
        lambda c: c.list_batch_executions("svc", "1"),
        "GET",
        "/api/svc/1/batch",
        [""],
        f"The server's answer to GET /api/svc/1/batch is not a list of execution ids: it holds ''. {NOT_THE_API}",
    ),
    "changed files not strings": (
        lambda c: c.consume("svc", "1", {"x": 1}, WebService.from_api(SERVICE), True),
        "POST",
        "/api/svc/1",
        {"success": True, "changedFiles": ["a.txt", 3]},
        "The server's result of record 0 has 'changedFiles' holding 3 (int), expected strings only. "
        f"{NOT_THE_API}",
    ),
    "output file content not text": (
        lambda c: c.consume("svc", "1", {"x": 1}, WebService.from_api(SERVICE), True),
        "POST",
        "/api/svc/1",
        {"success": True, "outputFiles": {"a.txt": None}},
        f"The server's result of record 0 has 'outputFiles' holding None (NoneType), expected strings only. "
        f"{NOT_THE_API}",
    ),
    "a negative count": (
        lambda c: c.get_batch("svc", "1", "e", False),
        "GET",
        "/api/svc/1/batch/e",
        ({**BATCH_HEAD, "completedItemCount": -1}, None),
        f"The server's batch execution status has 'completedItemCount' = -1, expected a count from 0. {NOT_THE_API}",
    ),
    "a count as text": (
        lambda c: c.get_batch("svc", "1", "e", False),
        "GET",
        "/api/svc/1/batch/e",
        ({**BATCH_HEAD, "failedItemCount": "3"}, None),
        f"The server's batch execution status has 'failedItemCount' = '3' (str), expected int. {NOT_THE_API}",
    ),
    "an execution id as a number": (
        lambda c: c.get_batch("svc", "1", "e", False),
        "GET",
        "/api/svc/1/batch/e",
        ({**BATCH_HEAD, "batchExecutionId": 5}, None),
        f"The server's batch execution status has 'batchExecutionId' = 5 (int), expected str. {NOT_THE_API}",
    ),
    "a new version not named": (
        lambda c: c.publish_service("svc", None, ServiceDefinition("y = x"), False),
        "POST",
        "/services/svc",
        "/api/svc/",
        f"The server's answer to POST /services/svc does not name the new version: '/api/svc/'. {NOT_THE_API}",
    ),
    "a publish answer that is not the consume path": (
        lambda c: c.publish_service("svc", "2", ServiceDefinition("y = x"), False),
        "POST",
        "/services/svc/2",
        {"ok": True},
        "The server's answer to POST /services/svc/2 is {'ok': True}, not the consume path (a JSON string). "
        f"{NOT_THE_API}",
    ),
    "a new version with a control character": (
        lambda c: c.publish_service("svc", None, ServiceDefinition("y = x"), False),
        "POST",
        "/services/svc",
        "/api/svc/v\x00",
        f"The server's answer to POST /services/svc does not name the new version: '/api/svc/v\\x00'. {NOT_THE_API}",
    ),
}


@pytest.mark.parametrize("case", WRONG_SHAPES, ids=str)
def test_an_answer_of_the_wrong_shape_is_malformed(case: str) -> None:
    flow, method, path, value, expected = WRONG_SHAPES[case]
    server = Server(flow(calls(login=None, password=None, access_token="tok")))
    with pytest.raises(MalformedResponseError) as raised:
        server.expect(method, path, ok(value))
    assert str(raised.value) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"access_token": "t", "expires_in": "soon"}, "'expires_in' = 'soon', expected a number of seconds"),
        ({"access_token": "t", "expires_in": True}, "'expires_in' = True, expected a number of seconds"),
        ({"access_token": "t", "expires_on": "nan"}, "'expires_on' = 'nan', expected a number of seconds"),
        ({"access_token": ["t"]}, "'access_token' = ['t'] (list), expected str"),
    ],
)
def test_a_login_answer_of_the_wrong_shape_is_malformed(answer: dict[str, Any], expected: str) -> None:
    server = Server(calls().list_services())
    with pytest.raises(MalformedResponseError) as raised:
        server.expect("POST", "/login", ok(answer))
    assert str(raised.value) == f"The server's login answer has {expected}. {NOT_THE_API}"


def test_a_started_execution_id_that_is_no_id_is_malformed() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    with pytest.raises(MalformedResponseError) as raised:
        server.expect("POST", "/api/svc/1/batch", ok({"batchExecutionId": "a/b"}))
    assert str(raised.value) == (
        f"The server's start-batch answer has 'batchExecutionId' = 'a/b', which is not an execution id. {NOT_THE_API}"
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "a number too long to read"),
        (b'{"state": "Ru', "Unterminated string starting at: line 1 column 11 (char 10)"),
    ],
)
def test_an_answer_that_json_cannot_read_is_malformed(body: bytes, why: str) -> None:
    reader = JsonReader("GET /x")
    reader.feed(body)
    with pytest.raises(MalformedResponseError) as raised:
        reader.finish(True)
    assert str(raised.value).startswith(f"The server's answer to GET /x is not valid JSON ({why}): ")
    assert len(str(raised.value)) < 500
    results = BatchAnswerParser("GET /b")
    with pytest.raises(MalformedResponseError, match=re.escape(f"({why.split(':')[0]}")):
        results.feed(b'{"state": "Complete", "batchExecutionResults": [' + body)
        results.close()
    error_body = ErrorBodyReader()  # an error answer's body is only shown: unreadable, it is shown cut
    error_body.feed(body)
    assert len(error_body.finish(True)) <= 530


@pytest.mark.parametrize("answer", ["/api/svc/v%202", "http://ml:12800/api/svc/v%202/"])
def test_a_new_version_is_read_from_the_consume_path(answer: str) -> None:
    server = Server(
        calls(login=None, password=None, access_token="tok").publish_service(
            "svc", None, ServiceDefinition("y = x"), False
        )
    )
    server.expect("POST", "/services/svc", ok(answer))
    server.expect("GET", "/services/svc/v%202", ok([{**SERVICE, "version": "v 2"}]))
    assert server.done and server.result.version == "v 2"


# --- invalid names: refused as invalid before they are sent, never answered "not found" ------------------

INVALID_NAMES = ["", "  ", "a/b", "a\\b", "a\x00b", "tab\tname", "\x7f", "\x85", ".", "..", None, 1.0]


@pytest.mark.parametrize("bad", INVALID_NAMES, ids=repr)
def test_an_invalid_name_is_refused_before_anything_is_sent(bad: Any) -> None:
    c = calls(login=None, password=None, access_token="tok")
    flows = {
        "Web service name": [
            c.get_service(bad, None),
            c.delete_service(bad, "1", False),
            c.list_batch_executions(bad, "1"),
        ],
        "Web service version": [
            c.delete_service("svc", bad, False),
            c.consume("svc", bad, {}, None, True),
            c.get_swagger("svc", bad),
        ],
        "Batch execution id": [
            c.get_batch("svc", "1", bad, False),
            c.cancel_batch("svc", "1", bad),
            c.list_artifacts("svc", "1", bad, 0),
        ],
    }
    for what, refused in flows.items():
        for flow in refused:
            with pytest.raises(MLServerConfigError) as raised:
                next(flow)  # the flow's first step: it would be the request
            assert str(raised.value).startswith(
                f"{what} must be a non-empty string without '/', '\\' or control characters (and not '.' or '..'), "
                f"not {bad!r}: "
            )
    with pytest.raises(MLServerConfigError, match=r"^Artifact name must be a non-empty string"):
        artifact_spec("svc", "1", "e", 0, bad)


def test_an_invalid_name_says_where_a_valid_one_comes_from() -> None:
    c = calls(login=None, password=None, access_token="tok")
    rule = "must be a non-empty string without '/', '\\' or control characters (and not '.' or '..')"
    cases = {
        lambda: next(
            c.get_service("a/b", None)
        ): f"Web service name {rule}, not 'a/b': use the name a service was "
        "published under (see list_services()).",
        lambda: next(
            c.get_service("svc", "..")
        ): f"Web service version {rule}, not '..': use a published version (see list_services()).",
        lambda: next(
            c.get_batch("svc", "1", "e\n1", False)
        ): f"Batch execution id {rule}, not 'e\\n1': use the id start_batch() answered.",
        lambda: artifact_spec("svc", "1", "e", 0, "../x"): f"Artifact name {rule}, not '../x': give one from "
        "list_artifacts().",
    }
    for call, expected in cases.items():
        with pytest.raises(MLServerConfigError) as raised:
            call()
        assert str(raised.value) == expected


# --- starting a batch: never twice silently ---------------------------------------------------------------


def start(c: Calls) -> Server:
    server = Server(c.start_batch("svc", "1", [{"x": 1}, {"x": 2}], 5, WebService.from_api(SERVICE), "error"))
    server.expect("GET", "/api/svc/1/batch", ok(["old"]))
    return server


def test_start_sends_the_checked_records() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    post = server.expect("POST", "/api/svc/1/batch", ok({"batchExecutionId": "new"}))
    assert post.spec.params == (("parallelCount", "5"),) and not post.spec.idempotent
    assert json.loads(post.spec.body or b"") == [{"x": 1}, {"x": 2}]
    assert server.done and server.result == "new"


def test_an_ambiguous_start_adopts_the_one_new_execution() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    server.expect("POST", "/api/svc/1/batch", AmbiguousSend("no answer in time"))
    server.expect("GET", "/api/svc/1/batch", ok(["old", "e-2"]))
    assert server.done and server.result == "e-2"


def test_an_ambiguous_start_with_no_new_execution_looks_again_then_resends() -> None:
    server = start(calls(login=None, password=None, access_token="tok", timeout=3.0))
    server.expect("POST", "/api/svc/1/batch", AmbiguousSend("connection reset"))
    server.expect("GET", "/api/svc/1/batch", ok(["old"]))
    assert server.expect_sleep() == 3.0  # a slow server may still be creating it
    server.expect("GET", "/api/svc/1/batch", ok(["old"]))
    server.expect("POST", "/api/svc/1/batch", ok({"BatchExecutionId": "e-3"}))
    assert server.done and server.result == "e-3"


def test_an_ambiguous_start_with_several_new_executions_names_them() -> None:
    server = start(calls(login=None, password=None, access_token="tok"))
    server.expect("POST", "/api/svc/1/batch", AmbiguousSend("HTTP 502: bad gateway"))
    with pytest.raises(AmbiguousStartError, match=r"2 executions appeared \(a, b\)") as raised:
        server.expect("GET", "/api/svc/1/batch", ok(["old", "b", "a"]))
    assert raised.value.candidates == ("a", "b")


def test_a_start_that_keeps_failing_before_the_server_acts_gives_up() -> None:
    server = start(calls(login=None, password=None, access_token="tok", max_retries=1))
    for _ in range(2):
        server.expect("POST", "/api/svc/1/batch", AmbiguousSend("reset"))
        server.expect("GET", "/api/svc/1/batch", ok(["old"]))
        server.expect_sleep()
        if _ == 1:
            with pytest.raises(AmbiguousStartError, match=r"kept failing .*no execution was created"):
                server.expect("GET", "/api/svc/1/batch", ok(["old"]))
        else:
            server.expect("GET", "/api/svc/1/batch", ok(["old"]))


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
    assert "GET /services at http://ml:1 failed 3 times, last: cannot connect" in str(err)


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
    assert f"failed {attempts} times, last: connection failed (refused)." in str(error)
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
