"""Bad input gets a specific error whose exact message says what is wrong and what to do."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_mlserver.client.models import ParameterDefinition, WebService
from airflow_mlserver.client.records import check_records, prepare_records
from airflow_mlserver.exceptions import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    MalformedResponseError,
    MLServerAuthError,
    MLServerConfigError,
    MLServerConnectionError,
    RecordValidationError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

CONN_ID = "mlserver_bad"
SERVICE = WebService(
    name="tx",
    version="1.0",
    inputs=(
        ParameterDefinition("hp", "numeric"),
        ParameterDefinition("n", "integer"),
        ParameterDefinition("ok", "logical"),
    ),
)
DECLARED = "hp (numeric), n (integer), ok (logical)"


def use_connection(monkeypatch: pytest.MonkeyPatch, uri: str) -> MLServerHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", uri)
    return MLServerHook(CONN_ID, retry_wait=0.01, retry_wait_max=0.02)


def message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


@pytest.fixture
def hook(mlserver: LocalMLServer, api: Api, monkeypatch: pytest.MonkeyPatch) -> MLServerHook:
    api.publish("badsvc", "1.0", "y = x", {"x": "integer"}, {"y": "integer"})
    return use_connection(monkeypatch, f"mlserver://admin:{mlserver.password}@127.0.0.1:{mlserver.port}")


# --- records -----------------------------------------------------------------------------------------------


def test_missing_column() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records(pd.DataFrame({"hp": [1.0], "ok": [True]}), SERVICE)
    assert message(excinfo) == (
        f"Missing input column 'n' (integer): service 'tx' version '1.0' declares inputs {DECLARED}; "
        "the data has hp, ok."
    )


def test_extra_column() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records({"hp": [1.0], "n": [1], "ok": [True], "color": ["red"]}, SERVICE)
    assert message(excinfo) == (
        f"Unexpected column 'color': service 'tx' version '1.0' declares inputs {DECLARED}. Remove it, or pass "
        "extra_columns='keep' or 'ignore' to send only the declared inputs."
    )
    # the client sends only the declared inputs with any of these; "drop" is the older name
    for choice in ("keep", "ignore", "drop"):
        assert prepare_records(
            {"hp": [1.0], "n": [1], "ok": [True], "color": ["red"]}, SERVICE, extra_columns=choice
        ) == [{"hp": 1.0, "n": 1, "ok": True}]


def test_bad_numeric_value_names_row_column_value_type() -> None:
    frame = pd.DataFrame({"hp": [1.0, 2.0, "fast"], "n": [1, 2, 3], "ok": [True, False, True]})
    expected = "Row 2, column 'hp': 'fast' (str) is not a valid numeric value: expected a number."
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records(frame, SERVICE)
    assert message(excinfo) == expected
    # the check-only pass (the operator's, over the whole input before anything is sent) says the same
    with pytest.raises(RecordValidationError) as excinfo:
        check_records(frame, SERVICE)
    assert message(excinfo) == expected
    assert check_records(frame.iloc[:2], SERVICE) == 2


def test_fractional_integer() -> None:
    frame = pd.DataFrame({"hp": [1.0, 2.0], "n": [1.0, 2.5], "ok": [True, False]})
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records(frame, SERVICE)
    assert (
        message(excinfo)
        == "Row 1, column 'n': 2.5 (float) is not a valid integer value: expected a whole number."
    )


def test_bad_logical() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records([{"hp": 1, "n": 1, "ok": True}, {"hp": 1, "n": 1, "ok": "maybe"}], SERVICE)
    assert (
        message(excinfo)
        == "Row 1, column 'ok': 'maybe' (str) is not a valid logical value: expected true or false."
    )


def test_infinite_number() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records({"hp": np.array([0.5, np.inf]), "n": [1, 2], "ok": [True, True]}, SERVICE)
    assert (
        message(excinfo)
        == "Row 1, column 'hp': inf (float) is not a valid numeric value: expected a finite number."
    )


def test_boolean_is_not_an_integer() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records([{"hp": 1.0, "n": True, "ok": True}], SERVICE)
    assert message(excinfo) == (
        "Row 0, column 'n': True (bool) is not a valid integer value: expected a whole number, not a boolean."
    )


def test_record_without_an_input() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records([{"hp": 1.0, "n": 1, "ok": True}, {"hp": 2.0, "ok": False}], SERVICE)
    assert (
        message(excinfo)
        == f"Row 1 has no value for input 'n'; every record needs every declared input: {DECLARED}."
    )


def test_row_that_is_not_a_mapping() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records([{"hp": 1.0, "n": 1, "ok": True}, [2.0, 2, False]], SERVICE)  # type: ignore[list-item]
    assert message(excinfo) == (
        "Row 1 is a list, not a mapping of input name to value: give a list of dicts, a dict of columns or a DataFrame."
    )


def test_columns_of_different_lengths() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records({"hp": [1.0, 2.0], "n": [1], "ok": [True, True]}, SERVICE)
    assert message(excinfo) == (
        "The columns have different lengths ('hp' has 2, 'n' has 1, 'ok' has 2): give every column one value per row."
    )


def test_no_rows() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records(pd.DataFrame({"hp": [], "n": [], "ok": []}), SERVICE)
    assert message(excinfo) == "The records are empty: a batch needs at least one record."


def test_ragged_matrix() -> None:
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records([{"m": [[1, 2], [3]]}], [ParameterDefinition("m", "matrix")])
    assert message(excinfo) == (
        "Row 0, column 'm': [[1, 2], [3]] (list) is not a valid matrix value: the rows have different lengths."
    )


def test_bad_records_are_refused_before_anything_is_sent(hook: MLServerHook) -> None:
    before = hook.list_batch_executions("badsvc", "1.0")
    with pytest.raises(RecordValidationError) as excinfo:
        hook.start_batch("badsvc", "1.0", {"x": [1, 2, "three"]})
    assert (
        message(excinfo)
        == "Row 2, column 'x': 'three' (str) is not a valid integer value: expected a whole number."
    )
    assert hook.list_batch_executions("badsvc", "1.0") == before


# --- connection fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "mlserver://admin:pw@",
            "Connection 'mlserver_bad' has no host: set it to the server's address, e.g. 'localhost' or "
            "'https://mlserver.example.com'.",
        ),
        (
            "mlserver+ftp://admin:pw@host",
            "Connection 'mlserver_bad' has type 'mlserver+ftp': use 'mlserver' (URI mlserver://...) or "
            "'mlserver+https' (URI mlserver+https://...).",
        ),
        (
            "mlserver+https://admin:pw@http%3A%2F%2Fhost",
            "Connection 'mlserver_bad': the host says http but the connection type or schema says https; make "
            "them agree.",
        ),
        (
            "mlserver://admin:pw@host/ftp",
            "Connection 'mlserver_bad': schema 'ftp' is not a URL scheme; set it to 'http' or 'https', or leave "
            "it empty.",
        ),
        (
            "mlserver://admin:pw@host?timeout=soon",
            "Connection 'mlserver_bad': extra 'timeout' must be a positive number of seconds, not 'soon'.",
        ),
        (
            "mlserver://admin:pw@host?max_retries=-1",
            "Connection 'mlserver_bad': extra 'max_retries' must be a whole number of at least 0, not '-1'.",
        ),
        (
            "mlserver://admin:pw@host?verify=%2Fno%2Fsuch%2Fca.pem",
            "Connection 'mlserver_bad': extra 'verify' is '/no/such/ca.pem', which is neither true/false nor an "
            "existing CA bundle file.",
        ),
        (
            "mlserver://host:12800",
            "Connection 'mlserver_bad' has no credentials: set login and password, or a bearer token in the "
            "'access_token' extra (or in the password, with no login).",
        ),
    ],
)
def test_bad_connection_fields(monkeypatch: pytest.MonkeyPatch, uri: str, expected: str) -> None:
    hook = use_connection(monkeypatch, uri)
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.list_services()
    assert message(excinfo) == expected
    # The UI tests a form under a made-up connection id: its Test speaks of "this connection".
    assert hook.test_connection() == (False, expected.replace("Connection 'mlserver_bad'", "This connection"))


def test_wrong_password(mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = use_connection(monkeypatch, f"mlserver://admin:not-the-password@127.0.0.1:{mlserver.port}")
    with pytest.raises(MLServerAuthError) as excinfo:
        hook.list_services()
    assert message(excinfo) == (
        "The server refused the login of user 'admin': a wrong user name or password (POST /login answered 401: "
        "Invalid username or password.). Check the login and password of connection 'mlserver_bad'."
    )


def test_server_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = use_connection(monkeypatch, f"mlserver://admin:password@127.0.0.1:{port}?max_retries=1")
    with pytest.raises(MLServerConnectionError) as excinfo:
        hook.list_services()
    assert message(excinfo) == (
        f"Could not log in (POST /login, tried 2 times): nothing answers at http://127.0.0.1:{port} (connection "
        "refused). Check the host and port of connection 'mlserver_bad', and that the server is running."
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: What a library says, that a person should never have to read in a Test's answer or a task's error.
LIBRARY_WORDS = ("HTTPConnection", "urllib3", "Errno", "object at 0x", "Max retries", "NewConnectionError")


def test_test_button_answers_quickly_naming_the_cause_and_the_fix(
    mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's Test: one attempt, a short timeout, the server's URL named, no connection id (it is made up), and
    the cause and the fix in the provider's words, whatever failed: a closed port, a host name no DNS knows, a
    server that takes the connection and never answers, a wrong password."""
    dead = free_port()
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = silent.getsockname()[1]
        cases = {
            f"mlserver://admin:pw@127.0.0.1:{dead}": (
                f"Could not log in (POST /login, tried once): nothing answers at http://127.0.0.1:{dead} "
                "(connection refused). Check the host and port of this connection, and that the server is running."
            ),
            f"mlserver://admin:pw@127.0.0.1:{quiet}": (  # the Test's timeout: at most 8 s
                f"Could not log in (POST /login, tried once): http://127.0.0.1:{quiet} took the request but sent no "
                "answer within 8 s. Check that a Machine Learning Server serves that address and is not "
                "overloaded, or raise the Timeout (seconds) of this connection."
            ),
            "mlserver://admin:pw@nonexistent.invalid:12800": (
                "Could not log in (POST /login, tried once): the host name 'nonexistent.invalid' is not known to the "
                "DNS, so http://nonexistent.invalid:12800 cannot be reached. Check the host of this connection: its "
                "spelling, or whether only another network (a VPN, a cluster's DNS) knows it."
            ),
            f"mlserver://admin:not-the-password@127.0.0.1:{mlserver.port}": (
                f"Machine Learning Server at http://127.0.0.1:{mlserver.port}: The server refused the login of "
                "user 'admin': a wrong user name or password (POST /login answered 401: Invalid username or "
                "password.). Check the login and password of this connection."
            ),
        }
        for uri, expected in cases.items():
            hook = use_connection(monkeypatch, uri)
            began = time.monotonic()
            ok, text = hook.test_connection()
            took = time.monotonic() - began
            assert (ok, text) == (False, expected), uri
            assert not [w for w in LIBRARY_WORDS if w in text], text
            assert "mlserver_bad" not in text
            assert took < 10.5, (uri, took)


async def _poll_once(hook: MLServerHook) -> None:
    try:
        await hook.async_get_batch("s", "1", "e")
    finally:
        await hook.aclose()


def test_a_task_reads_the_same_cause_and_fix_with_either_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that gives up after its retries names the cause and the fix as the Test does, for the sync driver
    (requests) and the async one (aiohttp) alike; a short timeout against a server that never answers."""
    dead = free_port()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        quiet = silent.getsockname()[1]
        cases = {
            f"127.0.0.1:{dead}": f"nothing answers at http://127.0.0.1:{dead} (connection refused). Check the host "
            "and port of connection 'mlserver_bad', and that the server is running.",
            "nonexistent.invalid:12800": "the host name 'nonexistent.invalid' is not known to the DNS, so "
            "http://nonexistent.invalid:12800 cannot be reached. Check the host of connection 'mlserver_bad'",
            f"127.0.0.1:{quiet}": f"http://127.0.0.1:{quiet} took the request but sent no answer within 1 s. Check "
            "that a Machine Learning Server serves that address and is not overloaded, or raise the Timeout "
            "(seconds) of connection 'mlserver_bad'.",
        }
        for where, expected in cases.items():
            hook = use_connection(monkeypatch, f"mlserver://admin:pw@{where}?max_retries=0&timeout=1")
            with pytest.raises(MLServerConnectionError) as sync_error:
                hook.list_services()
            with pytest.raises(MLServerConnectionError) as async_error:
                asyncio.run(_poll_once(hook))
            for text in (message(sync_error), message(async_error)):
                assert expected in text, (where, text)
                assert not [w for w in LIBRARY_WORDS if w in text], text


def test_test_button_on_something_else_than_a_machine_learning_server(
    stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook],
) -> None:
    """A web server that has no login, or answers a web page: the Test says it is not a Machine Learning Server."""
    routes, hook = stub
    url = hook.settings.base_url
    del routes[("POST", "/login")]  # every path answers 404
    assert hook.test_connection() == (
        False,
        f"Could not log in: {url} has no Machine Learning Server login (POST /login answered 404: no route). Check "
        "the host, port and path of this connection: is a Machine Learning Server at that address?",
    )
    routes[("POST", "/login")] = (200, b"<html><body>Welcome to nginx</body></html>")
    assert hook.test_connection() == (
        False,
        f"Machine Learning Server at {url}: The server's answer to POST /login is an HTML page, not JSON: "
        "'<html><body>Welcome to nginx</body></html>'. Check that the connection points at a Machine Learning "
        "Server (or a compatible one), not at a web page or another service.",
    )


# --- unknown things on a real server -----------------------------------------------------------------------


def test_unknown_service(hook: MLServerHook) -> None:
    with pytest.raises(ServiceNotFoundError) as excinfo:
        hook.get_service("nosuch")
    assert message(excinfo) == (
        "Web service 'nosuch' was not found (GET /services/nosuch answered 404: Web service 'nosuch' not found. "
        "List the published services with GET /services.). Check the name and version; list_services() shows "
        "what is published."
    )


def test_unknown_version(hook: MLServerHook) -> None:
    with pytest.raises(ServiceNotFoundError) as excinfo:
        hook.start_batch("badsvc", "9.9", {"x": [1]})
    assert message(excinfo) == (
        "Web service 'badsvc' version '9.9' was not found (GET /services/badsvc/9.9 answered 404: Web service "
        "'badsvc' has no version '9.9'. Published versions: 1.0.). Check the name and version; list_services() "
        "shows what is published."
    )


def test_unknown_execution_id(hook: MLServerHook) -> None:
    with pytest.raises(ExecutionNotFoundError) as excinfo:
        hook.get_batch("badsvc", "1.0", "no-such-id")
    assert message(excinfo) == (
        "Batch execution 'no-such-id' of web service 'badsvc' version '1.0' was not found (GET "
        "/api/badsvc/1.0/batch/no-such-id answered 404: Batch execution 'no-such-id' not found for service "
        "'badsvc' version '1.0'. List its executions with GET /api/badsvc/1.0/batch.). Check the execution id; "
        "list_batch_executions() gives the ids the server knows."
    )


def test_empty_execution_id(hook: MLServerHook) -> None:
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.cancel_batch("badsvc", "1.0", " ")
    assert message(excinfo) == (
        "Batch execution id must be a non-empty string without '/', '\\' or control characters (and not '.' or "
        "'..'), not ' ': use the id start_batch() answered."
    )


@pytest.mark.parametrize("parallel", [0, 101, 2.5])
def test_parallel_count_out_of_range(hook: MLServerHook, parallel: Any) -> None:
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.start_batch("badsvc", "1.0", {"x": [1]}, parallel_count=parallel)
    assert message(excinfo) == (
        "parallel_count must be a whole number from 1 to 100 (the server's maximum threads per batch execution), "
        f"not {parallel!r}."
    )


def test_artifact_index_out_of_range(hook: MLServerHook) -> None:
    execution_id = hook.start_batch("badsvc", "1.0", {"x": [1, 2]})
    with pytest.raises(ArtifactNotFoundError) as excinfo:
        hook.list_artifacts("badsvc", "1.0", execution_id, 5)
    assert message(excinfo) == (
        f"Record 5 of batch execution '{execution_id}' was not found (GET /api/badsvc/1.0/batch/{execution_id}/5/files "
        f"answered 404: Record index 5 is out of range: execution '{execution_id}' has 2 records, indexed 0 to 1.). "
        "Record indexes count from 0; list_artifacts() gives a record's file names."
    )


def test_publish_existing_version(hook: MLServerHook) -> None:
    with pytest.raises(ServiceExistsError) as excinfo:
        hook.publish_service("badsvc", "1.0", "y = x", inputs={"x": "integer"}, outputs={"y": "integer"})
    assert message(excinfo) == (
        "Web service 'badsvc' version '1.0' exists already (POST /services/badsvc/1.0 answered 403: Web service "
        "'badsvc' version '1.0' already exists: update it with PATCH.). Publish a new version, or pass replace=True."
    )


# --- malformed answers from a stub server ------------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], tuple[int, bytes]] = {}

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = self.routes.get(
            (self.command, self.path.split("?")[0]), (404, b'{"message": "no route"}')
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook]]:
    routes: dict[tuple[str, str], tuple[int, bytes]] = {
        ("POST", "/login"): (
            200,
            json.dumps({"access_token": "stub-token-1234", "expires_in": 3600}).encode(),
        ),
        ("GET", "/services/s/1"): (
            200,
            json.dumps(
                [
                    {
                        "name": "s",
                        "version": "1",
                        "inputParameterDefinitions": [{"name": "x", "type": "integer"}],
                    }
                ]
            ).encode(),
        ),
        ("GET", "/api/s/1/batch"): (200, b"[]"),
    }
    handler = type("Handler", (_Stub,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook = use_connection(
        monkeypatch, f"mlserver://admin:password@127.0.0.1:{server.server_address[1]}?max_retries=0"
    )
    yield routes, hook
    server.shutdown()
    server.server_close()


def test_garbage_instead_of_json(stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook]) -> None:
    routes, hook = stub
    routes[("GET", "/services")] = (200, b"<html>proxy error</html>")
    with pytest.raises(MalformedResponseError) as excinfo:
        hook.list_services()
    assert message(excinfo) == (
        "The server's answer to GET /services is an HTML page, not JSON: '<html>proxy error</html>'. Check that the "
        "connection points at a Machine Learning Server (or a compatible one), not at a web page or another "
        "service."
    )


def test_service_without_version_field(
    stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook],
) -> None:
    routes, hook = stub
    routes[("GET", "/services")] = (200, b'[{"name": "s"}]')
    with pytest.raises(MalformedResponseError) as excinfo:
        hook.list_services()
    assert message(excinfo) == (
        "The server's web service description has no 'version' field. The server does not follow the Machine "
        "Learning Server API: check the connection points at a Machine Learning Server (or a compatible one)."
    )


def test_status_without_state(stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook]) -> None:
    routes, hook = stub
    routes[("GET", "/api/s/1/batch/e1")] = (200, b'{"totalItemCount": 1, "completedItemCount": 0}')
    with pytest.raises(MalformedResponseError) as excinfo:
        hook.get_batch("s", "1", "e1")
    assert message(excinfo) == (
        "The server's batch execution status has no 'state' field. The server does not follow the Machine Learning "
        "Server API: check the connection points at a Machine Learning Server (or a compatible one)."
    )


def test_truncated_status(stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook]) -> None:
    routes, hook = stub
    routes[("GET", "/api/s/1/batch/e1")] = (200, b'{"state": "Running", "totalItemCount": 1')
    with pytest.raises(MalformedResponseError) as excinfo:
        hook.get_batch("s", "1", "e1")
    assert message(excinfo) == (
        "The server's answer to GET /api/s/1/batch/e1 is not valid JSON (the answer ended early): ''. Check that the "
        "connection points at a Machine Learning Server (or a compatible one)."
    )


def test_start_answer_without_id(stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook]) -> None:
    routes, hook = stub
    routes[("POST", "/api/s/1/batch")] = (200, b'{"name": "s", "version": "1"}')
    with pytest.raises(MalformedResponseError) as excinfo:
        hook.start_batch("s", "1", [{"x": 1}])
    assert message(excinfo) == (
        "The server's start-batch answer has no 'batchExecutionId' (nor 'BatchExecutionId') field: {'name': 's', "
        "'version': '1'}. The server does not follow the Machine Learning Server API."
    )


def test_start_answer_with_microsoft_client_spelling(
    stub: tuple[dict[tuple[str, str], tuple[int, bytes]], MLServerHook],
) -> None:
    routes, hook = stub
    routes[("POST", "/api/s/1/batch")] = (200, b'{"BatchExecutionId": "abc"}')
    routes[("GET", "/api/s/1/batch/abc")] = (
        200,
        b'{"state": "RUNNING-ish", "totalItemCount": 1, "completedItemCount": 0}',
    )
    assert hook.start_batch("s", "1", [{"x": 1}]) == "abc"
    status = hook.get_batch("s", "1", "abc")
    assert (status.execution_id, status.is_finished, status.is_running) == (
        "abc",
        False,
        True,
    )  # unknown = running
