"""Publishing with model objects over real HTTP: R sessions keep RDS bytes, the hook publishes R and Python services.

The R model objects are written by R itself (``Rscript`` runs ``saveRDS``), as a user's would be. R and
rpy2 are required, not optional: ``make test`` installs both.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dill
import pytest

from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.calls import Calls
from airflow_mlserver.client.models import ServiceDefinition
from airflow_mlserver.client.protocol import Answer, Wire
from airflow_mlserver.client.publishing import publish_with_objects
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.exceptions import MLServerApiError, ModelObjectError
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

CONN_ID = "mlserver_publish_test"

#: The seed's service, as the example DAG publishes it (the function in initCode, the call in code).
R_INIT = """
manualTransmission <- function(hp, wt) {
  png(file = "Histogram.png", bg = "transparent")
  hist(mtcars$hp, breaks = 10, col = "red", xlab = "Horsepower", main = "Histogram of Horsepower")
  dev.off()
  predict(carsModel, data.frame(hp = hp, wt = wt), type = "response")
}
"""
R_CODE = "answer <- manualTransmission(hp, wt)\n"


def save_rds(folder: Path, expression: str, name: str, compress: str = "TRUE") -> Path:
    """Run R: ``saveRDS(<expression>, <folder>/<name>.rds, compress = <compress>)``; answer the file."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.fail("R is missing (Rscript not on PATH): `make test` installs it (Debian's r-base-core).")
    path = folder / f"{name}.rds"
    code = f'saveRDS({expression}, file = "{path}", compress = {compress})'
    subprocess.run([rscript, "--vanilla", "-e", code], check=True, capture_output=True, timeout=120)
    return path


@pytest.fixture(scope="module")
def rpy2_present() -> None:
    try:
        import rpy2  # noqa: F401
    except ImportError:
        pytest.fail(
            "rpy2 is missing: `make test` installs it (the r extra; the local server runs R with it)."
        )


@pytest.fixture
def hook(mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MLServerHook]:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        f"mlserver://{mlserver.username}:{mlserver.password}@127.0.0.1:{mlserver.port}",
    )
    hook = MLServerHook(CONN_ID, retry_wait=0.05, retry_wait_max=0.5)
    yield hook
    hook.close()


def _message(answer: object, status: int) -> str:
    assert getattr(answer, "status_code", None) == status, getattr(answer, "text", answer)
    message: str = answer.json()["message"]  # type: ignore[attr-defined]
    return message


def _leftovers(api: Api) -> tuple[set[str], set[str]]:
    """The ids of this user's sessions and snapshots."""
    return (
        {s["id"] for s in api.get("/sessions").json()},
        {s["id"] for s in api.get("/snapshots").json()},
    )


def test_r_session_keeps_rds_bytes_and_refuses_others(api: Api, tmp_path: Path) -> None:
    gzipped = save_rds(tmp_path, "list(a = 1)", "gz").read_bytes()
    plain = save_rds(tmp_path, "c(1.5, 2.5)", "plain", compress="FALSE").read_bytes()
    assert gzipped[:2] == b"\x1f\x8b" and plain[:2] == b"X\n"
    session_id = api.post("/sessions", json={"runtimeType": "R"}).json()["sessionId"]
    octets = {"Content-Type": "application/octet-stream"}
    try:
        for name, data in (("cars.model", gzipped), ("weights", plain)):
            assert (
                api.post(f"/sessions/{session_id}/workspace/{name}", data=data, headers=octets).status_code
                == 200
            )
        assert api.get(f"/sessions/{session_id}/workspace").json() == ["cars.model", "weights"]
        refused = api.post(
            f"/sessions/{session_id}/workspace/model", data=dill.dumps({"a": 1}), headers=octets
        )
        message = _message(refused, 400)
        assert message.startswith(
            f"Workspace object 'model' of R session '{session_id}' is not RDS (it starts "
        )
        assert message.endswith("send what R's saveRDS writes.")
        assert _message(
            api.post(f"/sessions/{session_id}/workspace/_x", data=plain, headers=octets), 400
        ) == (
            "Invalid workspace object name '_x': use an R variable name (letters, digits, '.' and '_', starting "
            "with a letter)."
        )
        snapshot_id = api.post(f"/sessions/{session_id}/snapshot", json={}).json()["snapshotId"]
        assert api.get(f"/snapshots/{snapshot_id}").json()["runtimeType"] == "R"
        wrong = api.post("/sessions", json={"runtimeType": "Python", "snapshotId": snapshot_id})
        assert _message(wrong, 400) == (
            f"Snapshot '{snapshot_id}' holds R objects: a Python session cannot load them; use it with an R session "
            "or service, or take a snapshot in a Python session."
        )
        wrong = api.post("/services/py_from_r/v1", json={"code": "y = 1", "snapshotId": snapshot_id})
        assert _message(wrong, 400) == (
            f"Snapshot '{snapshot_id}' holds R objects: a Python service cannot load them; use it with an R session "
            "or service, or take a snapshot in a Python session."
        )
        again = api.post("/sessions", json={"runtimeType": "R", "snapshotId": snapshot_id}).json()[
            "sessionId"
        ]
        assert api.get(f"/sessions/{again}/workspace").json() == ["cars.model", "weights"]
        assert api.delete(f"/sessions/{again}").status_code == 200
        assert api.delete(f"/snapshots/{snapshot_id}").status_code == 200
    finally:
        api.delete(f"/sessions/{session_id}")
    assert _message(api.post("/sessions", json={"runtimeType": "Julia"}), 400) == (
        "Unknown runtimeType 'Julia': use 'Python' or 'R'."
    )


def test_hook_refuses_a_non_rds_object_before_sending(hook: MLServerHook, api: Api, tmp_path: Path) -> None:
    before = _leftovers(api)
    not_rds = tmp_path / "carsModel.pkl"
    not_rds.write_bytes(dill.dumps({"a": 1}))
    cases = {
        "a dict": ({"intercept": 1.0}, "is a dict, not RDS bytes or the path of an .rds file"),
        "dill bytes": (dill.dumps({"a": 1}), "is not RDS (the bytes start with b'\\x80"),
        "a dill file": (not_rds, f"is not RDS (the bytes of file '{not_rds}' start with b'\\x80"),
        "a missing file": (tmp_path / "nope.rds", f"cannot read '{tmp_path / 'nope.rds'}' (No such file"),
    }
    for case, (value, says) in cases.items():
        with pytest.raises(ModelObjectError) as raised:
            hook.publish_service(
                "RRefused", "1", R_CODE, {"hp": "numeric"}, {"answer": "numeric"}, runtime_type="R",
                model_objects={"carsModel": value},
            )  # fmt: skip
        message = str(raised.value)
        assert message.startswith("Model object 'carsModel' of an R service"), case
        assert says in message, (case, message)
        assert message.endswith(
            'write it in R with saveRDS(carsModel, "carsModel.rds") and pass that path (or the file\'s bytes).'
        ), case
        assert raised.value.object_name == "carsModel"
    assert _leftovers(api) == before  # nothing was sent: no session, no snapshot
    # refused by the server once the session and snapshot exist: both are cleaned up all the same
    with pytest.raises(MLServerApiError) as refused:
        hook.publish_service(
            "RRefused", "1", R_CODE, {"hp": "decimal"}, {"answer": "numeric"}, runtime_type="R",
            model_objects={"carsModel": save_rds(tmp_path, "1", "one")},
        )  # fmt: skip
    assert refused.value.status == 400 and "unknown type 'decimal'" in refused.value.server_message
    assert _leftovers(api) == before
    assert api.get("/services/RRefused").status_code == 404


def test_hook_publishes_a_python_service_with_a_model_object(hook: MLServerHook, api: Api) -> None:
    before = _leftovers(api)
    service = hook.publish_service(
        "PyWithModel", "1.0", "y = x * model['scale'] + offset", {"x": "numeric"}, {"y": "numeric"},
        init_code="offset = len(model)", model_objects={"model": {"scale": 3.0, "unused": None}}, replace=True,
    )  # fmt: skip
    assert (service.name, service.version, service.runtime_type) == ("PyWithModel", "1.0", "Python")
    assert service.snapshot_id
    assert hook.consume("PyWithModel", "1.0", {"x": 2.0}).outputs == {"y": 8.0}
    assert _leftovers(api) == before  # the session closed and the snapshot deleted; the service kept its copy
    hook.publish_service(  # replace: the new object replaces the old
        "PyWithModel", "1.0", "y = x * model['scale'] + offset", {"x": "numeric"}, {"y": "numeric"},
        init_code="offset = len(model)", model_objects={"model": {"scale": 10.0}}, replace=True,
    )  # fmt: skip
    assert hook.consume("PyWithModel", "1.0", {"x": 2.0}).outputs == {"y": 21.0}
    assert _leftovers(api) == before


def test_hook_publishes_an_r_service_with_an_rds_model(
    hook: MLServerHook, api: Api, tmp_path: Path, rpy2_present: None
) -> None:
    before = _leftovers(api)
    model = save_rds(tmp_path, "glm(am ~ hp + wt, data = mtcars, family = binomial)", "carsModel")
    for given in (model, model.read_bytes()):  # the path of the .rds file, or its bytes
        service = hook.publish_service(
            "RWithModel", "1.0", R_CODE, {"hp": "numeric", "wt": "numeric"}, {"answer": "numeric"},
            init_code=R_INIT, output_file_names=["Histogram.png"], runtime_type="R",
            model_objects={"carsModel": given}, replace=True,
        )  # fmt: skip
        assert service.runtime_type == "R"
        result = hook.consume("RWithModel", "1.0", {"hp": 120, "wt": 2.8})
        assert result.success, result.error_message
        assert round(result.outputs["answer"], 7) == 0.6418125  # the seed's value, from carsModel
        assert set(result.output_files) == {"Histogram.png"}
        assert _leftovers(api) == before
    # the model object is what the service predicts with: a model fitted on other data answers otherwise
    other = save_rds(tmp_path, "glm(am ~ hp + wt, data = mtcars[1:20, ], family = binomial)", "other")
    hook.publish_service(
        "RWithModel", "1.0", R_CODE, {"hp": "numeric", "wt": "numeric"}, {"answer": "numeric"},
        init_code=R_INIT, runtime_type="R", model_objects={"carsModel": other}, replace=True,
    )  # fmt: skip
    answer = hook.consume("RWithModel", "1.0", {"hp": 120, "wt": 2.8}).outputs["answer"]
    assert round(answer, 7) != 0.6418125
    assert hook.delete_service("RWithModel", "1.0")


def test_publish_flow_sends_each_step_and_only_logs_a_failed_clean_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no socket: the requests in order, their bodies and content types; a failed delete is a warning."""
    settings = ConnectionSettings(conn_id="ml", base_url="http://ml:12800", access_token="tok")
    calls = Calls(Auth(settings, logging.getLogger("test-publish")), logging.getLogger("test-publish"))
    definition = ServiceDefinition(R_CODE, {"hp": "numeric"}, {"answer": "numeric"}, runtime_type="R")
    flow = publish_with_objects(calls, "svc", "1", definition, {"carsModel": b"X\n\x00"}, replace=False)
    published = {"name": "svc", "version": "1", "runtimeType": "R", "snapshotId": "snap"}
    answers = [
        Answer(201, {}, value={"sessionId": "sess"}),
        Answer(200, {}),
        Answer(201, {}, value={"snapshotId": "snap"}),
        Answer(201, {}, value="/api/svc/1"),
        Answer(200, {}, value=[published]),
        Answer(200, {}),
        Answer(500, {}, error_message="disk full"),
    ]
    sent: list[tuple[str, str, str, bytes | None]] = []
    wire = flow.send(None)
    with caplog.at_level(logging.WARNING, logger="test-publish"):
        try:
            for answer in answers:
                assert isinstance(wire, Wire)
                spec = wire.spec
                sent.append((spec.method, spec.path, wire.headers.get("Content-Type", ""), spec.body))
                wire = flow.send(answer)
            raise AssertionError("the flow asked for more than the answers given")
        except StopIteration as done:
            service = done.value
    json_type, octets = "application/json", "application/octet-stream"
    assert [s[:3] for s in sent] == [
        ("POST", "/sessions", json_type),
        ("POST", "/sessions/sess/workspace/carsModel", octets),
        ("POST", "/sessions/sess/snapshot", json_type),
        ("POST", "/services/svc/1", json_type),
        ("GET", "/services/svc/1", ""),
        ("DELETE", "/sessions/sess", ""),
        ("DELETE", "/snapshots/snap", ""),
    ]
    assert json.loads(sent[0][3] or b"") == {"runtimeType": "R"}
    assert sent[1][3] == b"X\n\x00"
    assert json.loads(sent[3][3] or b"")["snapshotId"] == "snap"
    assert (service.name, service.runtime_type) == ("svc", "R")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("Could not delete snapshot 'snap' after publishing (Could not delete snapshot")
    assert warning.endswith("; it stays on the server")
