"""The local server over real HTTP: the contract's calls, and every bad request answered with a clear 4xx."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import requests

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, wait_for

SQUARE = "y = x * x\nprint('squared', x)\n"
ARTIFACT = (
    "with open('out.txt', 'w') as f:\n"
    "    f.write(f'value={x}')\n"
    "with open('scratch.tmp', 'w') as f:\n"
    "    f.write('not an artifact')\n"
    "y = x\n"
)


@pytest.fixture(scope="module")
def square(api: Api) -> str:
    api.publish("square", "v1", SQUARE, {"x": "numeric"}, {"y": "numeric"})
    return "square"


@pytest.fixture(scope="module")
def writer(api: Api) -> str:
    api.publish("writer", "v1", ARTIFACT, {"x": "integer"}, {"y": "integer"}, files=["out.txt"])
    return "writer"


def test_login_answers_a_token_object(mlserver: LocalMLServer) -> None:
    answer = requests.post(f"{mlserver.url}/login", json={"username": "admin", "password": mlserver.password})
    tokens = answer.json()
    assert answer.status_code == 200
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert abs(tokens["expires_on"] - (time.time() + 3600)) < 60
    assert tokens["access_token"] and tokens["refresh_token"]


def test_refresh_gives_a_working_token_and_revoke_stops_refresh(mlserver: LocalMLServer) -> None:
    tokens = requests.post(
        f"{mlserver.url}/login", json={"username": "admin", "password": mlserver.password}
    ).json()
    renewed = requests.post(
        f"{mlserver.url}/login/refreshToken", json={"refreshToken": tokens["refresh_token"]}
    )
    assert renewed.status_code == 200
    fresh = renewed.json()
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert requests.get(f"{mlserver.url}/services", headers=headers).status_code == 200
    # a refresh token is used once
    again = requests.post(
        f"{mlserver.url}/login/refreshToken", json={"refreshToken": tokens["refresh_token"]}
    )
    assert again.status_code == 401
    revoked = requests.delete(
        f"{mlserver.url}/login/refreshToken", params={"refreshToken": fresh["refresh_token"]}, headers=headers
    )
    assert revoked.status_code == 200
    after = requests.post(f"{mlserver.url}/login/refreshToken", json={"refreshToken": fresh["refresh_token"]})
    assert after.status_code == 401
    assert (
        after.json()["message"] == "Invalid, revoked or expired refresh token: log in again with POST /login."
    )


def test_status_reports_health(api: Api) -> None:
    status = api.get("/status").json()
    assert status["statusCode"] == "pass"
    assert status["components"]["computeNodes"]["details"] == {"alive": 2, "expected": 2}


def test_publish_get_list_patch_delete(api: Api) -> None:
    api.publish("lifecycle", "1.0", "z = a", {"a": "character"}, {"z": "character"})
    api.publish("lifecycle", "2.0", "z = a + '!'", {"a": "character"}, {"z": "character"})
    one = api.get("/services/lifecycle/1.0").json()
    assert isinstance(one, list) and len(one) == 1
    service = one[0]
    assert service["name"] == "lifecycle" and service["version"] == "1.0"
    assert service["versionPublishedBy"] == "admin"
    assert service["myPermissionOnService"] == "read/write"
    assert service["description"] == "test service lifecycle"
    assert service["inputParameterDefinitions"] == [{"name": "a", "type": "character"}]
    versions = [s["version"] for s in api.get("/services/lifecycle").json()]
    assert versions == ["1.0", "2.0"]  # oldest first
    assert {"lifecycle"} <= {s["name"] for s in api.get("/services").json()}
    patched = api.request(
        "PATCH", "/services/lifecycle/2.0", json={"code": "z = a + '?'", "description": "new"}
    )
    assert patched.status_code == 200, patched.text
    assert api.post("/api/lifecycle/2.0", json={"a": "ok"}).json()["outputParameters"] == {"z": "ok?"}
    assert api.get("/services/lifecycle/2.0").json()[0]["description"] == "new"
    assert api.delete("/services/lifecycle/1.0").status_code == 200
    assert [s["version"] for s in api.get("/services/lifecycle").json()] == ["2.0"]
    generated = api.post("/services/lifecycle", json={"code": "z = a", "runtimeType": "Python"})
    assert generated.status_code == 201
    assert generated.json().startswith("/api/lifecycle/")


def test_swagger_describes_the_service(api: Api, square: str) -> None:
    doc = api.get(f"/api/{square}/v1/swagger.json").json()
    assert doc["swagger"] == "2.0"
    assert doc["definitions"]["InputParameters"]["properties"] == {
        "x": {"type": "number", "format": "double"}
    }
    assert f"/api/{square}/v1/batch" in doc["paths"]


def test_consume_runs_the_code(api: Api, square: str) -> None:
    answer = api.post(f"/api/{square}/v1", json={"x": 3}).json()
    assert answer["success"] is True
    assert answer["outputParameters"] == {"y": 9.0}
    assert answer["consoleOutput"] == "squared 3.0\n"


def test_consume_returns_declared_files_base64(api: Api, writer: str) -> None:
    answer = api.post(f"/api/{writer}/v1", json={"x": 5}).json()
    assert answer["outputFiles"] == {"out.txt": base64.b64encode(b"value=5").decode()}
    assert sorted(answer["changedFiles"]) == ["out.txt", "scratch.tmp"]


def test_failing_code_is_http_200_with_success_false(api: Api) -> None:
    api.publish(
        "boom", "v1", "if x > 1:\n    raise ValueError('too big')\ny = x", {"x": "integer"}, {"y": "integer"}
    )
    answer = api.post("/api/boom/v1", json={"x": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is False
    assert body["errorMessage"].startswith("ValueError: too big")


def test_init_code_runs_once_per_worker(api: Api) -> None:
    init = "import os\ncounter = {'n': 0}\npid = os.getpid()\n"
    code = "counter['n'] += 1\ncalls = counter['n']\nworker = pid\n"
    api.publish(
        "initonce", "v1", code, {"x": "integer"}, {"calls": "integer", "worker": "integer"}, init_code=init
    )
    results = api.wait("initonce", "v1", api.start_batch("initonce", "v1", [{"x": i} for i in range(40)], 4))
    seen: dict[int, list[int]] = {}
    for r in results["batchExecutionResults"]:
        seen.setdefault(r["outputParameters"]["worker"], []).append(r["outputParameters"]["calls"])
    # the namespace built by initCode persists in each worker: its counter keeps growing there
    for calls in seen.values():
        assert sorted(calls) == list(range(1, len(calls) + 1))
    assert sum(len(c) for c in seen.values()) == 40


def test_batch_runs_every_record_in_order(api: Api, square: str) -> None:
    execution_id = api.start_batch(square, "v1", [{"x": i} for i in range(50)], parallel=5)
    assert execution_id in api.get(f"/api/{square}/v1/batch").json()
    results = api.wait(square, "v1", execution_id)
    assert results["state"] == "Complete"
    assert results["totalItemCount"] == results["completedItemCount"] == 50
    assert [r["outputParameters"]["y"] for r in results["batchExecutionResults"]] == [
        float(i * i) for i in range(50)
    ]


def test_start_answer_carries_both_id_spellings(api: Api, square: str) -> None:
    answer = api.post(f"/api/{square}/v1/batch", json=[{"x": 1}]).json()
    assert answer["batchExecutionId"] == answer["BatchExecutionId"]
    assert answer["name"] == square and answer["version"] == "v1"


def test_batch_failed_record_does_not_stop_the_batch(api: Api) -> None:
    api.publish("sometimes", "v1", "if x == 2:\n    raise RuntimeError('bad record')\ny = x", {"x": "integer"},
                {"y": "integer"})  # fmt: skip
    results = api.wait("sometimes", "v1", api.start_batch("sometimes", "v1", [{"x": i} for i in range(5)], 2))
    assert results["state"] == "Complete"
    flags = [r["success"] for r in results["batchExecutionResults"]]
    assert flags == [True, True, False, True, True]
    assert results["batchExecutionResults"][2]["errorMessage"].startswith("RuntimeError: bad record")


def test_init_code_failure_fails_the_execution(api: Api) -> None:
    api.publish(
        "badinit", "v1", "y = x", {"x": "integer"}, {"y": "integer"}, init_code="raise OSError('no model')"
    )
    results = api.wait("badinit", "v1", api.start_batch("badinit", "v1", [{"x": 1}, {"x": 2}], 1))
    assert results["state"] == "Failed"
    assert results["errorMessage"].startswith("initCode failed: OSError: no model")


def test_poll_without_partial_results_is_constant_size(api: Api) -> None:
    api.publish("slowish", "v1", "import time\ntime.sleep(0.05)\ny = x", {"x": "integer"}, {"y": "integer"})
    small = api.start_batch("slowish", "v1", [{"x": 1}] * 100, 1)
    large = api.start_batch("slowish", "v1", [{"x": 1}] * 5000, 1)
    wait_for(
        "both executions to have finished records",
        lambda: all(api.status("slowish", "v1", e)["completedItemCount"] > 0 for e in (small, large)),
        timeout=60,
        interval=0.05,
    )
    a = api.get(f"/api/slowish/v1/batch/{small}?showPartialResults=false")
    b = api.get(f"/api/slowish/v1/batch/{large}?showPartialResults=false")
    assert "batchExecutionResults" not in b.json()
    assert abs(len(a.content) - len(b.content)) <= 8  # only the counts' digits differ
    partial = api.get(f"/api/slowish/v1/batch/{large}?showPartialResult=true").json()
    # the head is read before the list streams, so records may finish in between: never fewer results
    assert 0 < partial["completedItemCount"] <= len(partial["batchExecutionResults"]) < 5000
    api.delete(f"/api/slowish/v1/batch/{large}")
    api.delete(f"/api/slowish/v1/batch/{small}")


def test_cancel_stops_records_that_have_not_started(api: Api) -> None:
    api.publish("sleepy", "v1", "import time\ntime.sleep(0.2)\ny = x", {"x": "integer"}, {"y": "integer"})
    execution_id = api.start_batch("sleepy", "v1", [{"x": i} for i in range(100)], 1)
    wait_for(
        "a record to finish",
        lambda: api.status("sleepy", "v1", execution_id)["completedItemCount"] > 0,
        timeout=60,
        interval=0.05,
    )
    answer = api.delete(f"/api/sleepy/v1/batch/{execution_id}")
    assert answer.status_code == 200
    assert answer.json()["state"] == "Canceled"
    # the record in flight has finished and is committed, and no lane took another group
    wait_for("the workers to be idle", api.workers_idle, timeout=30, interval=0.05)
    first = api.status("sleepy", "v1", execution_id, partial=True)
    second = api.status("sleepy", "v1", execution_id, partial=True)
    assert first["state"] == second["state"] == "Canceled"
    assert first["completedItemCount"] == second["completedItemCount"] < 20
    assert len(second["batchExecutionResults"]) == second["completedItemCount"]


def test_artifacts_listed_and_read_per_record(api: Api, writer: str) -> None:
    execution_id = api.start_batch(writer, "v1", [{"x": i} for i in range(3)], 3)
    api.wait(writer, "v1", execution_id)
    for i in range(3):
        assert api.get(f"/api/{writer}/v1/batch/{execution_id}/{i}/files").json() == ["out.txt"]
        content = api.get(f"/api/{writer}/v1/batch/{execution_id}/{i}/files/out.txt")
        assert content.content == f"value={i}".encode()


def test_parallel_count_is_honoured(api: Api) -> None:
    code = "import time, os\nstart = time.time()\ntime.sleep(0.3)\nend = time.time()\n"
    api.publish("overlap", "v1", code, {"x": "integer"}, {"start": "numeric", "end": "numeric"})
    one = api.wait("overlap", "v1", api.start_batch("overlap", "v1", [{"x": i} for i in range(4)], 1))
    spans = [
        (r["outputParameters"]["start"], r["outputParameters"]["end"]) for r in one["batchExecutionResults"]
    ]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(3))  # strictly one after another
    two = api.wait("overlap", "v1", api.start_batch("overlap", "v1", [{"x": i} for i in range(4)], 2))
    spans = sorted(
        (r["outputParameters"]["start"], r["outputParameters"]["end"]) for r in two["batchExecutionResults"]
    )
    assert spans[1][0] < spans[0][1]  # two records ran at the same time


# -- bad requests: each a 4xx with a JSON message that names the problem ------------------------------------


def _message(answer: requests.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    message: str = answer.json()["message"]
    return message


def test_bad_login(mlserver: LocalMLServer) -> None:
    answer = requests.post(f"{mlserver.url}/login", json={"username": "admin", "password": "wrong"})
    assert _message(answer, 401) == "Invalid username or password."


def test_login_body_not_json(mlserver: LocalMLServer) -> None:
    answer = requests.post(f"{mlserver.url}/login", data="{not json")
    assert _message(answer, 400).startswith("The request body is not valid JSON (")


def test_no_token(mlserver: LocalMLServer) -> None:
    answer = requests.get(f"{mlserver.url}/services")
    assert _message(answer, 401) == (
        "Missing Authorization header: log in with POST /login and send 'Bearer <access_token>'."
    )


def test_unknown_token(mlserver: LocalMLServer) -> None:
    answer = requests.get(f"{mlserver.url}/status", headers={"Authorization": "Bearer nope"})
    assert _message(answer, 401) == "Invalid access token: log in again with POST /login."


def test_unknown_route_needs_a_token_too(mlserver: LocalMLServer) -> None:
    assert requests.get(f"{mlserver.url}/nothing/here").status_code == 401


def test_unknown_route(api: Api) -> None:
    assert _message(api.get("/nothing/here"), 404) == (
        "No route for GET /nothing/here: see the API reference for valid routes."
    )


def test_unknown_service(api: Api) -> None:
    assert _message(api.get("/services/ghost/v1"), 404) == (
        "Web service 'ghost' not found. List the published services with GET /services."
    )


def test_unknown_version(api: Api, square: str) -> None:
    assert _message(api.post(f"/api/{square}/v9", json={"x": 1}), 404) == (
        "Web service 'square' has no version 'v9'. Published versions: v1."
    )


def test_publish_twice(api: Api, square: str) -> None:
    answer = api.post(f"/services/{square}/v1", json={"code": "y = x"})
    assert _message(answer, 403) == "Web service 'square' version 'v1' already exists: update it with PATCH."


def test_publish_without_code(api: Api) -> None:
    assert _message(api.post("/services/nocode/v1", json={"description": "x"}), 400) == (
        "'code' is required: the Python code the service runs."
    )


def test_publish_bad_type(api: Api) -> None:
    body = {"code": "y = x", "inputParameterDefinitions": [{"name": "x", "type": "float"}]}
    assert _message(api.post("/services/badtype/v1", json=body), 400) == (
        "'inputParameterDefinitions[0]': unknown type 'float' for 'x'; use one of integer, numeric, character, "
        "logical, vector, matrix, data.frame."
    )


def test_publish_syntax_error(api: Api) -> None:
    assert _message(api.post("/services/syntax/v1", json={"code": "y = ("}), 400).startswith(
        "'code' is not valid Python: "
    )


def test_publish_r_runtime(api: Api) -> None:
    """R code is not checked as Python, and its parameters follow R's names; other runtimes are refused."""
    body = {
        "code": "my.y <- x + 1",
        "runtimeType": "r",
        "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
        "outputParameterDefinitions": [{"name": "my.y", "type": "numeric"}],
    }
    api.delete("/services/rsvc/v1")
    assert api.post("/services/rsvc/v1", json=body).status_code == 201
    assert api.get("/services/rsvc/v1").json()[0]["runtimeType"] == "R"
    assert api.delete("/services/rsvc/v1").status_code == 200
    reserved = {**body, "inputParameterDefinitions": [{"name": "TRUE", "type": "logical"}]}
    assert _message(api.post("/services/rsvc/v1", json=reserved), 400) == (
        "'inputParameterDefinitions[0]': 'TRUE' is not a valid R variable name."
    )
    assert _message(api.post("/services/rsvc/v1", json={"code": "y <- x", "runtimeType": "Julia"}), 400) == (
        "Unknown runtimeType 'Julia': use 'Python' or 'R'."
    )


def test_publish_output_file_with_path(api: Api) -> None:
    body = {"code": "y = 1", "outputFileNames": ["../evil.txt"]}
    assert _message(api.post("/services/evil/v1", json=body), 400) == (
        "'outputFileNames': '../evil.txt' is not a plain file name (no path separators or control characters)."
    )


def test_delete_someone_elses_service(tmp_path_factory: pytest.TempPathFactory) -> None:
    with LocalMLServer(
        tmp_path_factory.mktemp("owners"), workers=1, extra_args=["--user", "bob:bobpw"]
    ) as server:
        admin = Api(server)
        admin.publish("owned", "v1", "y = x", {"x": "integer"}, {"y": "integer"})
        bob = Api(server, "bob", "bobpw")
        assert bob.get("/services/owned/v1").json()[0]["myPermissionOnService"] == "read only"
        assert _message(bob.delete("/services/owned/v1"), 403) == (
            "Web service 'owned' version 'v1' belongs to 'admin': only its publisher may change or delete it."
        )


def test_consume_missing_input(api: Api, square: str) -> None:
    assert _message(api.post(f"/api/{square}/v1", json={}), 400) == (
        "The request body is missing the declared input 'x' of service 'square' version 'v1' (declared: x)."
    )


def test_batch_record_missing_input(api: Api, square: str) -> None:
    answer = api.post(f"/api/{square}/v1/batch", json=[{"x": 1}, {"z": 2}])
    assert _message(answer, 400) == (
        "Record 1 is missing the declared input 'x' of service 'square' version 'v1' (declared: x)."
    )


def test_batch_record_unknown_input(api: Api, square: str) -> None:
    answer = api.post(f"/api/{square}/v1/batch", json=[{"x": 1, "extra": 2}])
    assert _message(answer, 400) == (
        "Record 0 has input 'extra' that service 'square' version 'v1' does not declare (declared: x)."
    )


def test_batch_body_not_a_list(api: Api, square: str) -> None:
    assert _message(api.post(f"/api/{square}/v1/batch", json={"x": 1}), 400) == (
        "The request body must be a JSON list of input records, one object per record."
    )


def test_batch_malformed_json(api: Api, square: str) -> None:
    answer = api.post(
        f"/api/{square}/v1/batch", data=b'[{"x": 1},', headers={"Content-Type": "application/json"}
    )
    assert _message(answer, 400).startswith("The request body is not valid JSON (")


def test_batch_empty(api: Api, square: str) -> None:
    assert _message(api.post(f"/api/{square}/v1/batch", json=[]), 400) == (
        "The batch has no records: send at least one input record."
    )


@pytest.mark.parametrize("value", ["0", "101", "-3"])
def test_parallel_count_out_of_range(api: Api, square: str, value: str) -> None:
    answer = api.post(f"/api/{square}/v1/batch?parallelCount={value}", json=[{"x": 1}])
    assert _message(answer, 400) == (
        f"parallelCount {value} is out of range: use 1 to 100 (the server's maximum threads per batch execution)."
    )


def test_parallel_count_not_a_number(api: Api, square: str) -> None:
    answer = api.post(f"/api/{square}/v1/batch?parallelCount=ten", json=[{"x": 1}])
    assert _message(answer, 400) == "parallelCount must be a whole number from 1 to 100, not 'ten'."


def test_unknown_execution_id(api: Api, square: str) -> None:
    assert _message(api.get(f"/api/{square}/v1/batch/nope"), 404) == (
        "Batch execution 'nope' not found for service 'square' version 'v1'. "
        "List its executions with GET /api/square/v1/batch."
    )


def test_record_index_out_of_range(api: Api, writer: str) -> None:
    execution_id = api.start_batch(writer, "v1", [{"x": 1}, {"x": 2}], 2)
    api.wait(writer, "v1", execution_id)
    assert _message(api.get(f"/api/{writer}/v1/batch/{execution_id}/2/files"), 404) == (
        f"Record index 2 is out of range: execution '{execution_id}' has 2 records, indexed 0 to 1."
    )
    assert _message(api.get(f"/api/{writer}/v1/batch/{execution_id}/x/files"), 400) == (
        "Record index must be a whole number, not 'x' (indexes count from 0)."
    )


def test_artifact_name_with_path_separator(api: Api, writer: str) -> None:
    execution_id = api.start_batch(writer, "v1", [{"x": 1}], 1)
    api.wait(writer, "v1", execution_id)
    answer = api.get(f"/api/{writer}/v1/batch/{execution_id}/0/files/..%5Cmlserver.db")
    assert _message(answer, 400) == (
        "Invalid file name '..\\\\mlserver.db': give a plain artifact name, without path separators or control "
        "characters."
    )
    encoded_slash = api.get(f"/api/{writer}/v1/batch/{execution_id}/0/files/..%2F..%2Fmlserver.db")
    assert encoded_slash.status_code in (400, 404)
    assert not encoded_slash.content.startswith(b"SQLite format 3")  # never the server's own database
    assert encoded_slash.json()["message"]


def test_undeclared_file_is_not_an_artifact(api: Api, writer: str) -> None:
    execution_id = api.start_batch(writer, "v1", [{"x": 1}], 1)
    api.wait(writer, "v1", execution_id)
    answer = api.get(f"/api/{writer}/v1/batch/{execution_id}/0/files/scratch.tmp")
    assert _message(answer, 404) == (
        f"Record 0 of execution '{execution_id}' has no artifact 'scratch.tmp'. "
        f"List its artifacts with GET .../batch/{execution_id}/0/files."
    )


def test_body_too_large(tmp_path_factory: pytest.TempPathFactory) -> None:
    with LocalMLServer(
        tmp_path_factory.mktemp("small"), workers=1, extra_args=["--max-body-mb", "0.01"]
    ) as server:
        admin = Api(server)
        admin.publish("tiny", "v1", "y = x", {"x": "integer"}, {"y": "integer"})
        too_large = (
            "The request body is larger than the server's limit of 10485 bytes: "
            "send fewer records per batch (split the data) or raise --max-body-mb."
        )
        answer = admin.post("/api/tiny/v1/batch", json=[{"x": i} for i in range(5000)])
        assert _message(answer, 413) == too_large

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what arrives
            yield b"["
            for i in range(3000):
                yield b'{"x": %d},' % i
            yield b'{"x": 0}]'

        answer = admin.post("/api/tiny/v1/batch", data=chunks(), headers={"Content-Type": "application/json"})
        assert _message(answer, 413) == too_large


def test_execution_timeout_fails_the_record_and_the_worker_is_replaced(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with LocalMLServer(
        tmp_path_factory.mktemp("timeout"), workers=1, extra_args=["--execution-timeout", "1"]
    ) as srv:
        admin = Api(srv)
        admin.publish("hang", "v1", "import time\ntime.sleep(x)\ny = x", {"x": "integer"}, {"y": "integer"})
        results = admin.wait("hang", "v1", admin.start_batch("hang", "v1", [{"x": 30}, {"x": 0}], 1))
        first, second = results["batchExecutionResults"]
        assert first["success"] is False
        assert first["errorMessage"] == "the execution ran longer than the server's execution timeout (1 s)"
        assert second["success"] is True


def test_republished_service_never_runs_stale_code(api: Api) -> None:
    for attempt in range(3):
        api.publish(
            "republished", "v1", f"y = x + {attempt}", {"x": "integer"}, {"y": "integer"}, init_code="k = 1"
        )
        for _ in range(4):  # reach both workers
            assert api.post("/api/republished/v1", json={"x": 10}).json()["outputParameters"] == {
                "y": 10 + attempt
            }


def test_session_workspace_snapshot_publish(api: Api) -> None:
    import dill

    session_id = api.post("/sessions", json={"runtimeType": "Python"}).json()["sessionId"]
    uploaded = api.post(
        f"/sessions/{session_id}/workspace/offset",
        data=dill.dumps(100),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 200
    assert api.get(f"/sessions/{session_id}/workspace").json() == ["offset"]
    snapshot_id = api.post(f"/sessions/{session_id}/snapshot", json={}).json()["snapshotId"]
    body = {"code": "y = x + offset", "snapshotId": snapshot_id, "runtimeType": "Python",
            "inputParameterDefinitions": [{"name": "x", "type": "integer"}],
            "outputParameterDefinitions": [{"name": "y", "type": "integer"}]}  # fmt: skip
    api.delete("/services/withobjects/v1")
    assert api.post("/services/withobjects/v1", json=body).status_code == 201
    # the client deletes both right after publishing: the service keeps its own copy of the objects
    assert api.delete(f"/sessions/{session_id}").status_code == 200
    assert api.delete(f"/snapshots/{snapshot_id}").status_code == 200
    assert api.post("/api/withobjects/v1", json={"x": 1}).json()["outputParameters"] == {"y": 101}


UNKNOWN_SNAPSHOT = (
    "Snapshot 'nope' not found: take one with POST /sessions/{id}/snapshot (GET /snapshots lists them)."
)


def test_session_from_unknown_snapshot(api: Api) -> None:
    answer = api.post("/sessions", json={"runtimeType": "Python", "snapshotId": "nope"})
    assert (
        _message(answer, 400)
        == "Snapshot 'nope' not found: take one with POST /sessions/{id}/snapshot (GET /snapshots lists them)."
    )


def test_publish_with_unknown_snapshot(api: Api) -> None:
    answer = api.post("/services/nosnap/v1", json={"code": "y = 1", "snapshotId": "nope"})
    assert (
        _message(answer, 400)
        == "Snapshot 'nope' not found: take one with POST /sessions/{id}/snapshot (GET /snapshots lists them)."
    )
