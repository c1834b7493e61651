"""Answers of the wrong shape and invalid names, with no socket: each refused with a specific error.

A server's answer that is not what the contract says is a ``MalformedResponseError`` naming what is wrong,
never taken as it is (nor turned into strings); a name that cannot be one path segment is an
``MLServerConfigError`` raised at the flow's first step, before its request exists. The flows are played as in
``test_client_flows.py``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from airflow_mlserver.client.calls import artifact_spec
from airflow_mlserver.client.errors import MalformedResponseError, MLServerConfigError
from airflow_mlserver.client.models import ServiceDefinition, WebService
from airflow_mlserver.client.streaming import BatchAnswerParser, ErrorBodyReader, JsonReader
from tests.test_client_flows import (  # noqa: F401 - no_shared_tokens: each test logs in afresh
    SERVICE,
    Server,
    calls,
    no_shared_tokens,
    ok,
    start,
)

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
