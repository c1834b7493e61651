"""The error surface, kind by kind, over real HTTP: the local server, and the hook against it or a dead port.

Each kind of bad input has several cases: a body the local server cannot read, a value too long to show whole,
what the files route may serve, a name that cannot be one, and how long a server that refuses connections
takes to fail (while a busy server is still waited for). Answers of the wrong shape and invalid names with no
socket are in ``test_client_answers.py``, the retry budgets with no socket in ``test_client_flows.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_mlserver.client.errors import (
    MLServerApiError,
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

CONN_ID = "mlserver_surface"
LONG = "a" * 30_000

# A numeric and a vector input (a vector may nest), a character output; out.txt is the declared artifact,
# written as what ``kind`` says: a regular file, a link to /etc/passwd, a folder, a fifo.
SERVICE_CODE = """
import os
if kind == 'file':
    with open('out.txt', 'w') as f:
        f.write('regular')
elif kind == 'link':
    os.symlink('/etc/passwd', 'out.txt')
elif kind == 'folder':
    os.mkdir('out.txt')
elif kind == 'fifo':
    os.mkfifo('out.txt')
echo = kind
"""


@pytest.fixture(scope="module")
def surface(api: Api) -> str:
    api.publish(
        "surface",
        "v1",
        SERVICE_CODE,
        {"kind": "character", "x": "numeric", "v": "vector"},
        {"echo": "character"},
        files=["out.txt"],
    )
    return "surface"


def connect(monkeypatch: pytest.MonkeyPatch, port: int, **hook_args: Any) -> MLServerHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://admin:pw@127.0.0.1:{port}")
    return MLServerHook(CONN_ID, **hook_args)


@pytest.fixture
def hook(mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch, surface: str) -> MLServerHook:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://admin:{mlserver.password}@127.0.0.1:{mlserver.port}"
    )
    return MLServerHook(CONN_ID, retry_wait=0.01, retry_wait_max=0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def message(answer: requests.Response | Any, status: int) -> str:
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["content-type"] == "application/json"
    text: str = answer.json()["message"]
    return text


def short(text: str, length: int = len(LONG)) -> str:
    """``text``, checked to show the long value cut, with its length, never whole."""
    assert f"… ({length:,} characters)" in text or f"…' ({length:,} characters)" in text, text[:300]
    assert "a" * 201 not in text and len(text) < 1200, len(text)
    return text


# --- 1. a body the local server cannot read: a 400 with a JSON message, never a plain-text 500 ------------

ROUTES = {
    "login": ("POST", "/login", 'a JSON object {"username": ..., "password": ...}'),
    "refresh": ("POST", "/login/refreshToken", 'a JSON object {"refreshToken": ...}'),
    "publish": ("POST", "/services/surface_new/v1", "a PublishWebServiceRequest object"),
    "patch": ("PATCH", "/services/surface/v1", "a PatchWebServiceRequest object"),
    "consume": ("POST", "/api/surface/v1", "a JSON object of the service's inputs"),
    "batch": ("POST", "/api/surface/v1/batch", "a list of input records"),
    "session": ("POST", "/sessions", "a CreateSessionRequest"),
}
UNREADABLE = {
    "100,000 levels deep": (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64 levels"),
    "65 levels deep": (b"[" * 65 + b"]" * 65, "nests deeper than 64 levels"),
    "an object 65 levels deep": (b'{"a":' * 65 + b"1" + b"}" * 65, "nests deeper than 64 levels"),
    "NaN": (b'{"x": NaN}', "holds NaN, which is not JSON (send null for a missing value)"),
    "Infinity": (b'[{"x": Infinity}]', "holds Infinity, which is not JSON (send null for a missing value)"),
    "-Infinity": (b'{"x": -Infinity}', "holds -Infinity, which is not JSON (send null for a missing value)"),
    "1e999": (b'{"x": 1e999}', "holds a number out of the range of a double (beyond 1.8e308)"),
    "-1e400 in a list": (
        b'[{"x": [1, -1e400]}]',
        "holds a number out of the range of a double (beyond 1.8e308)",
    ),
    "a 400-digit float": (
        b'{"x": ' + b"9" * 400 + b".5}",
        "holds a number out of the range of a double (beyond 1.8e308)",
    ),
    "a 5,000-digit number": (b'{"x": ' + b"9" * 5000 + b"}", "holds a number of more than 4300 digits"),
    "a lone high surrogate": (
        b'{"x": "\\ud800"}',
        "holds a lone surrogate escape (\\ud800 to \\udfff), which is not Unicode text",
    ),
    "a lone low surrogate in a key": (
        b'[{"\\udc00": 1}]',
        "holds a lone surrogate escape (\\ud800 to \\udfff), which is not Unicode text",
    ),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", UNREADABLE)
def test_a_body_that_cannot_be_read_is_a_400_saying_why(
    api: Api, surface: str, route: str, body: str
) -> None:
    method, path, expected = ROUTES[route]
    raw, problem = UNREADABLE[body]
    answer = api.request(method, path, data=raw, headers={"Content-Type": "application/json"})
    assert message(answer, 400) == f"The request body {problem}; expected {expected}."


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        ('{"username": "é"}'.encode("latin-1"), "is not UTF-8 text (byte 0xe9 at position 14)"),
        ('{"username": "admin"}'.encode("utf-16"), "is not UTF-8 text (byte 0xff at position 0)"),
        (b'{"username": "admin"', "is not valid JSON (Expecting ',' delimiter: line 1 column 21 (char 20))"),
        (b"username=admin&password=pw", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            b'\xef\xbb\xbf{"username": "admin"}',
            "is not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig)",
        ),
    ],
    ids=["latin-1", "utf-16", "cut short", "a form", "a byte-order mark"],
)
def test_a_body_in_another_encoding_or_not_json_is_a_400(
    mlserver: LocalMLServer, raw: bytes, start: str
) -> None:
    answer = requests.post(f"{mlserver.url}/login", data=raw, timeout=30)
    assert message(answer, 400).startswith(f"The request body {start}")


def test_what_json_allows_within_the_limits_is_accepted(api: Api, surface: str) -> None:
    """64 levels, paired surrogates (an emoji), the largest double: read as sent, not refused."""
    deep: Any = 1
    for _ in range(62):  # the object, its "v" and 62 lists: 64 levels
        deep = [deep]
    body = {"kind": "\ud83d\ude00", "x": 1.7976931348623157e308, "v": [deep]}
    answer = api.post("/api/surface/v1", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputParameters"] == {"echo": "\N{GRINNING FACE}"}


def test_a_failure_no_route_foresaw_is_a_json_500(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from airflow_mlserver.server.app import create_app
    from airflow_mlserver.server.auth import issue_tokens
    from airflow_mlserver.server.config import ServerConfig

    app = create_app(ServerConfig(data_dir=tmp_path, workers=1))

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken/" + "b" * 300, broken)
    token = issue_tokens(app.state.ctx, "admin")["access_token"]
    client = TestClient(app, raise_server_exceptions=False)
    answer = client.get("/broken/" + "b" * 300, headers={"Authorization": f"Bearer {token}"})
    assert message(answer, 500) == (
        f"The server failed on GET /broken/{'b' * 192}… (308 characters) (RuntimeError): see its log."
    )
    app.state.ctx.store.close()


# --- 2. a long value is shown cut to 200 characters, with its length, wherever it is echoed -------------


def test_the_hook_shows_a_long_value_cut(hook: MLServerHook) -> None:
    cases: dict[str, Callable[[], object]] = {
        "name": lambda: hook.get_service(LONG),
        "version": lambda: hook.list_batch_executions("surface", LONG),
        "execution id": lambda: hook.get_batch("surface", "v1", LONG),
        "artifact name": lambda: hook.open_artifact("surface", "v1", "e-1", 0, LONG),
        "parallel count": lambda: hook.start_batch("surface", "v1", [{"kind": "", "x": 1, "v": []}], LONG),  # type: ignore[arg-type]
    }
    for what, call in cases.items():
        with pytest.raises(MLServerError) as raised:
            call()
        text = short(str(raised.value))
        assert text.count("(30,000 characters)") <= 2, (what, text)


def test_a_long_server_message_is_cut_and_kept_on_the_error(hook: MLServerHook) -> None:
    with pytest.raises(MLServerApiError) as raised:
        hook.get_service("surface", LONG)
    text = str(raised.value)
    assert text.endswith(
        "(30,000 characters): use letters, digits, '_', '.' or '-' (at most 128), starting with a letter or digit.). "
        "The server refused the request as invalid: fix what its message names."
    ), text[-300:]  # the server's advice survives the cut
    assert raised.value.server_message.startswith("Invalid service version 'aaa")
    assert len(raised.value.server_message) < 520


def test_a_connection_field_too_long_is_shown_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://admin:pw@h/{LONG}")
    with pytest.raises(MLServerConfigError) as raised:
        MLServerHook(CONN_ID).list_services()
    assert short(str(raised.value)).startswith("Connection 'mlserver_surface': schema 'aaaa")


@pytest.mark.parametrize(
    ("path", "start"),
    [
        (f"/api/surface/v1/batch?parallelCount={'9' * 30_000}", "parallelCount must be a whole number"),
        (f"/services/{LONG}", "Invalid service name 'aaaa"),
        (f"/api/surface/{LONG}/batch", "Invalid service version 'aaaa"),
        (f"/nothing/{LONG}", "No route for GET /nothing/aaaa"),
    ],
    ids=["parallelCount", "name", "version", "no route"],
)
def test_the_server_shows_a_long_value_cut(api: Api, surface: str, path: str, start: str) -> None:
    method = "POST" if "parallelCount" in path else "GET"
    answer = api.request(method, path, json=[{"kind": "", "x": 1, "v": []}])
    text = message(answer, 404 if start.startswith("No route") else 400)
    assert text.startswith(start) and ("… (30,0" in text or "…' (30,0" in text), text[:300]
    assert len(text) < 500, len(text)


def test_the_server_shows_a_long_flag_cut(api: Api, surface: str) -> None:
    execution_id = api.start_batch(surface, "v1", [{"kind": "", "x": 1, "v": []}], 1)
    answer = api.get(f"/api/{surface}/v1/batch/{execution_id}?showPartialResults={LONG}")
    assert (
        message(answer, 400)
        == f"showPartialResults must be true or false, not '{'a' * 200}…' (30,000 characters)."
    )


def test_the_server_shows_long_inputs_and_values_cut(api: Api, surface: str) -> None:
    answer = api.post("/api/surface/v1/batch", json=[{"kind": "", "x": 1, "v": [], LONG: 1}])
    assert message(answer, 400) == short(
        f"Record 0 has input '{'a' * 200}…' (30,000 characters) that service 'surface' version 'v1' does not "
        "declare (declared: kind, x, v)."
    )
    result = api.post("/api/surface/v1", json={"kind": "file", "x": LONG, "v": []}).json()
    assert result["success"] is False
    assert result["errorMessage"] == short(
        f"InputError: input 'x' (numeric): expected a number, got '{'a' * 200}…' (30,000 characters)"
    )


# --- 3. the files route: only regular files inside the record's folder, reached without a link ------------


def record_folder(mlserver: LocalMLServer, execution_id: str, index: int) -> Path:
    return mlserver.data_dir / "executions" / execution_id / str(index)


def test_what_the_service_leaves_is_served_only_when_a_regular_file(api: Api, surface: str) -> None:
    kinds = ["file", "link", "folder", "fifo"]
    execution_id = api.start_batch(surface, "v1", [{"kind": k, "x": 1, "v": []} for k in kinds], 2)
    results = api.wait(surface, "v1", execution_id)["batchExecutionResults"]
    assert [r["success"] for r in results] == [True] * 4, results
    for index, kind in enumerate(kinds):
        files = api.get(f"/api/{surface}/v1/batch/{execution_id}/{index}/files")
        read = api.get(f"/api/{surface}/v1/batch/{execution_id}/{index}/files/out.txt", timeout=10)
        if kind == "file":
            assert files.json() == ["out.txt"] and read.content == b"regular"
        else:
            assert files.json() == [], kind
            assert message(read, 404) == (
                f"Record {index} of execution '{execution_id}' has no artifact 'out.txt'. List its artifacts with "
                f"GET .../batch/{execution_id}/{index}/files."
            )
    consumed = api.post(f"/api/{surface}/v1", json={"kind": "link", "x": 1, "v": []}).json()
    assert consumed["success"] is True and consumed["outputFiles"] == {}  # not /etc/passwd


def test_what_appears_in_a_record_folder_later_is_served_only_when_a_regular_file(
    api: Api, mlserver: LocalMLServer, surface: str
) -> None:
    """Something the service left running may swap a finished record's artifact, or the folder itself."""
    execution_id = api.start_batch(surface, "v1", [{"kind": "file", "x": 1, "v": []}] * 5, 5)
    api.wait(surface, "v1", execution_id)
    folders = [record_folder(mlserver, execution_id, i) for i in range(5)]
    (folders[0] / "out.txt").unlink()
    (folders[0] / "out.txt").symlink_to(mlserver.data_dir / "mlserver.db")
    (folders[1] / "out.txt").unlink()
    os.mkfifo(folders[1] / "out.txt")
    (folders[2] / "out.txt").unlink()
    (folders[2] / "out.txt").mkdir()
    (folders[3] / "out.txt").unlink()
    os.link(folders[4] / "out.txt", folders[3] / "out.txt")  # a hard link is a regular file: served
    for folder in folders[:3]:
        assert (folder / "out.txt").exists()
    elsewhere = mlserver.data_dir / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "out.txt").write_text("outside the record")
    moved = folders[4].with_name("4-moved")
    folders[4].rename(moved)
    folders[4].symlink_to(elsewhere, target_is_directory=True)
    for index in range(5):
        files = api.get(f"/api/{surface}/v1/batch/{execution_id}/{index}/files").json()
        read = api.get(f"/api/{surface}/v1/batch/{execution_id}/{index}/files/out.txt", timeout=10)
        if index == 3:
            assert files == ["out.txt"] and read.content == b"regular"
        else:
            assert files == [] and read.status_code == 404, (index, files, read.content[:40])


# --- 4. invalid names: refused as invalid (400 on the server, before sending on the client) -----------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/services/a%01b/v1", "Invalid service name 'a\\x01b'"),
        ("/services/surface/v%00", "Invalid service version 'v\\x00'"),
        ("/services/-surface", "Invalid service name '-surface'"),
        ("/api/surface/v%201/swagger.json", "Invalid service version 'v 1'"),
        ("/api/surface/v1/batch/e%0A1", "Invalid batch execution id 'e\\n1'"),
        ("/api/surface/v1/batch/%2E%2E", "Invalid batch execution id '..'"),
        ("/api/surface/v1/batch/e/0/files/a%00b", "Invalid file name 'a\\x00b'"),
    ],
    ids=["control character", "NUL", "leading dash", "space", "newline id", "dot-dot id", "NUL file"],
)
def test_the_server_refuses_an_invalid_name_as_invalid(
    api: Api, surface: str, path: str, expected: str
) -> None:
    assert message(api.get(path), 400).startswith(expected)


def test_an_index_that_is_not_a_plain_number_is_invalid(api: Api, surface: str) -> None:
    execution_id = api.start_batch(surface, "v1", [{"kind": "file", "x": 1, "v": []}], 1)
    for index in ("+1", "1_0", " 1", "\N{ARABIC-INDIC DIGIT ONE}"):
        answer = api.get(f"/api/{surface}/v1/batch/{execution_id}/{urllib.parse.quote(index)}/files")
        assert (
            message(answer, 400)
            == f"Record index must be a whole number, not {index!r} (indexes count from 0)."
        )


def test_the_hook_refuses_an_invalid_name_before_sending_it(hook: MLServerHook) -> None:
    hook.list_services()  # logged in: what follows would be sent at once
    for bad in ("a/b", "", "x\ty", ".."):
        with pytest.raises(MLServerConfigError, match=r"^Web service name must be a non-empty string"):
            hook.get_service(bad)
        with pytest.raises(MLServerConfigError, match=r"^Web service version must be a non-empty string"):
            hook.start_batch("surface", bad, [{"kind": "", "x": 1, "v": []}])
        with pytest.raises(MLServerConfigError, match=r"^Batch execution id must be a non-empty string"):
            hook.get_batch("surface", "v1", bad)
        with pytest.raises(MLServerConfigError, match=r"^Artifact name must be a non-empty string"):
            hook.download_artifact("surface", "v1", "e", 0, bad, "/dev/null")


# --- 5. a server that refuses connections fails within ~15 s; a busy one is waited for as today -------------


def test_a_refused_connection_fails_within_about_15_s_with_the_default_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    sync_hook, async_hook = (
        connect(monkeypatch, port),
        connect(monkeypatch, port),
    )  # default retries and waits

    def failing_in(call: Callable[[], object]) -> tuple[float, str]:
        began = time.monotonic()
        with pytest.raises(MLServerConnectionError) as raised:
            call()
        return time.monotonic() - began, str(raised.value)

    async def both() -> list[tuple[float, str]]:
        sync = asyncio.to_thread(failing_in, sync_hook.list_services)
        async_side = asyncio.to_thread(
            failing_in, lambda: asyncio.run(async_hook.async_get_batch("surface", "v1", "e-1"))
        )
        return list(await asyncio.gather(sync, async_side))

    for seconds, text in asyncio.run(both()):
        assert 13.0 <= seconds < 20.0, seconds  # today's 8 retries with backoff took about two minutes
        # both drivers say the same, in the provider's words
        assert re.fullmatch(
            rf"Could not log in \(POST /login, tried \d+ times\): nothing answers at http://127\.0\.0\.1:{port} "
            r"\(connection refused\)\. Check the host and port of connection 'mlserver_surface', and that the "
            r"server is running\.",
            text,
        ), text


def test_a_server_that_comes_back_within_the_budget_is_reached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    hook = connect(monkeypatch, port)
    server = LocalMLServer(tmp_path, workers=1, port=port, password="pw")
    starter = threading.Timer(2.0, server.start)
    starter.start()
    try:
        began = time.monotonic()
        assert hook.list_services() == []
        assert 2.0 < time.monotonic() - began < 16.0
    finally:
        starter.join()
        server.stop()


def test_a_server_that_answers_429_is_retried_as_long_as_today(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Default settings: 9 attempts, each after the server's Retry-After (1 s) plus a tenth of the backoff."""
    with LocalMLServer(tmp_path, workers=1, password="pw", extra_args=["--faults", "429:1"]) as server:
        hook = connect(monkeypatch, server.port)
        began = time.monotonic()
        with pytest.raises(MLServerApiError) as raised:
            hook.list_services()
        seconds = time.monotonic() - began
    assert seconds > 15.0, seconds  # beyond the budget of refused connections
    assert str(raised.value) == (
        "Could not list the web services: GET /services answered 429 (HTTP 429: Injected fault: 429) to all 9 "
        "attempts. The server is overloaded or unavailable: retry later, or raise the connection's max_retries."
    )


def test_a_server_that_answers_503_gets_every_retry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with LocalMLServer(tmp_path, workers=1, password="pw", extra_args=["--faults", "503:1"]) as server:
        hook = connect(monkeypatch, server.port, max_retries=5, retry_wait=0.01, retry_wait_max=0.02)
        with pytest.raises(
            MLServerApiError, match=r"answered 503 \(HTTP 503: Injected fault: 503\) to all 6 attempts"
        ):
            hook.get_batch("surface", "v1", "e-1")
