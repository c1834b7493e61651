"""R services on the local server over real HTTP: R embedded in the workers, request-response and batch.

These tests need Debian's R and rpy2 (the ``r`` extra); ``make test`` installs both. Without them every test
here fails with one line saying so (never skipped).
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The seed's service (Microsoft's R documentation): a logistic regression of mtcars, and a histogram.
SEED_CODE = """
manualTransmission <- function(hp, wt) {
  png(file = "Histogram.png", bg = "transparent")
  hist(mtcars$hp, breaks = 10, col = "red", xlab = "Horsepower", main = "Histogram of Horsepower")
  dev.off()
  newdata <- data.frame(hp = hp, wt = wt)
  predict(carsModel, newdata, type = "response")
}
answer <- manualTransmission(hp, wt)
"""
CARS_MODEL = "glm(formula = am ~ hp + wt, data = mtcars, family = binomial)"


def require_r() -> None:
    """Fail (never skip) the calling test when R or rpy2 is missing, in one line."""
    if shutil.which("Rscript") is None or importlib.util.find_spec("rpy2") is None:
        pytest.fail(
            "R services need Debian's R and rpy2 (the r extra): `make test` installs them.", pytrace=False
        )


def rscript(code: str) -> str:
    """Run R code with ``Rscript``; answer what it printed."""
    done = subprocess.run(
        ["Rscript", "--vanilla", "-e", code], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def publish_r(
    api: Api,
    name: str,
    code: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    init_code: str | None = None,
    files: list[str] | None = None,
    snapshot_id: str | None = None,
) -> None:
    """Publish an R service as version v1 (replacing an existing one)."""
    api.delete(f"/services/{name}/v1")
    body = {
        "code": code,
        "initCode": init_code,
        "runtimeType": "R",
        "inputParameterDefinitions": [{"name": k, "type": v} for k, v in inputs.items()],
        "outputParameterDefinitions": [{"name": k, "type": v} for k, v in outputs.items()],
        "outputFileNames": files or [],
        "snapshotId": snapshot_id,
    }
    answer = api.post(f"/services/{name}/v1", json=body)
    assert answer.status_code == 201, answer.text


def consume(api: Api, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    answer = api.post(f"/api/{name}/v1", json=inputs)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def r_snapshot(api: Api, tmp_path: Path, objects: dict[str, str]) -> str:
    """A snapshot of an R session holding each object (an R expression) as RDS bytes, as R clients send them."""
    session_id = api.post("/sessions", json={"runtimeType": "R"}).json()["sessionId"]
    for name, expression in objects.items():
        path = tmp_path / f"{name}.rds"
        rscript(f'saveRDS({expression}, file = "{path}")')
        stored = api.post(
            f"/sessions/{session_id}/workspace/{name}",
            data=path.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert stored.status_code == 200, stored.text
    snapshot_id: str = api.post(f"/sessions/{session_id}/snapshot", json={}).json()["snapshotId"]
    api.delete(f"/sessions/{session_id}")
    return snapshot_id


def assert_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 2000  # a drawn histogram (axes, bars, title), not an empty image


def test_seed_service_with_a_model_object_request_response_and_batch(api: Api, tmp_path: Path) -> None:
    require_r()
    snapshot_id = r_snapshot(api, tmp_path, {"carsModel": CARS_MODEL})
    publish_r(
        api, "mtService", SEED_CODE, {"hp": "numeric", "wt": "numeric"}, {"answer": "numeric"},
        files=["Histogram.png"], snapshot_id=snapshot_id,
    )  # fmt: skip
    api.delete(f"/snapshots/{snapshot_id}")  # the service keeps its own copy of the objects
    result = consume(api, "mtService", {"hp": 120, "wt": 2.8})
    assert result["success"] is True, result["errorMessage"]
    assert result["outputParameters"]["answer"] == pytest.approx(0.6418125, abs=1e-7)
    assert result["changedFiles"] == ["Histogram.png"]
    assert_png(base64.b64decode(result["outputFiles"]["Histogram.png"]))

    table = rscript("write.table(mtcars[, c('hp', 'wt')], row.names = FALSE, col.names = FALSE)")
    rows = [{"hp": float(hp), "wt": float(wt)} for hp, wt in (line.split() for line in table.splitlines())]
    expected = [
        float(v)
        for v in rscript(
            f"m <- {CARS_MODEL}; cat(sprintf('%.17g', predict(m, mtcars, type = 'response')))"
        ).split()
    ]
    execution_id = api.start_batch("mtService", "v1", rows, parallel=10)
    results = api.wait("mtService", "v1", execution_id)
    assert results["state"] == "Complete"
    assert results["completedItemCount"] == results["totalItemCount"] == 32
    answers = [r["outputParameters"]["answer"] for r in results["batchExecutionResults"]]
    assert answers == pytest.approx(expected, abs=1e-9)
    base = f"/api/mtService/v1/batch/{execution_id}"
    for index in (0, 31):
        assert api.get(f"{base}/{index}/files").json() == ["Histogram.png"]
        assert_png(api.get(f"{base}/{index}/files/Histogram.png").content)


TYPES = {
    "i": "integer",
    "n": "numeric",
    "s": "character",
    "b": "logical",
    "v": "vector",
    "m": "matrix",
    "d": "data.frame",
}
ROUND_TRIP_CODE = """
o_i <- i; o_n <- n; o_s <- s; o_b <- b; o_v <- v; o_m <- m; o_d <- d
classes <- vapply(list(i, n, s, b, v, m, d), function(x) class(x)[1], "")
"""


def test_the_seven_types_round_trip(api: Api) -> None:
    require_r()
    outputs = {f"o_{k}": t for k, t in TYPES.items()} | {"classes": "vector"}
    publish_r(api, "rtypes", ROUND_TRIP_CODE, TYPES, outputs)
    record = {
        "i": 3,
        "n": 2.5,
        "s": "héllo, R",
        "b": True,
        "v": [1.5, 2, None],
        "m": [[1, 2, 3], [4, 5, 6]],
        "d": {"a": [1, 2], "b": ["x", None]},
    }
    result = consume(api, "rtypes", record)
    assert result["success"] is True, result["errorMessage"]
    out = result["outputParameters"]
    assert out.pop("classes") == [
        "integer",
        "numeric",
        "character",
        "logical",
        "numeric",
        "matrix",
        "data.frame",
    ]
    assert out == {f"o_{k}": v for k, v in record.items()}
    # a character vector, a character matrix, a data.frame as a list of rows; and nulls as NA or NULL
    others = [
        {**record, "v": ["a", "b"], "m": [["p", "q"]], "d": [{"a": 1, "b": "x"}, {"a": 2, "c": True}]},
        {k: None for k in TYPES},
    ]
    results = api.wait("rtypes", "v1", api.start_batch("rtypes", "v1", others, parallel=2))
    first, nulls = (r["outputParameters"] for r in results["batchExecutionResults"])
    assert first["classes"] == [
        "integer",
        "numeric",
        "character",
        "logical",
        "character",
        "matrix",
        "data.frame",
    ]
    assert (first["o_v"], first["o_m"]) == (["a", "b"], [["p", "q"]])
    assert first["o_d"] == {"a": [1, 2], "b": ["x", None], "c": [None, True]}
    assert nulls["classes"] == ["integer", "numeric", "character", "logical", "NULL", "NULL", "NULL"]
    assert all(nulls[f"o_{k}"] is None for k in TYPES)


def test_r_values_encoded_as_json(api: Api) -> None:
    require_r()
    code = """
f <- factor(c("lo", "hi", NA, "lo")); one <- factor("only"); when <- as.Date("2026-11-30")
named <- list(a = 1L, b = list(2, "x")); unnamed <- list(1, "a"); missing <- c(1, NA, NaN, Inf)
frame <- data.frame(k = factor(c("u", "v")), z = c(TRUE, NA)); fit <- lm(mpg ~ wt, data = mtcars)
square <- function(v) v^2
"""
    outputs = ["f", "one", "when", "named", "unnamed", "missing", "frame", "fit", "square"]
    publish_r(api, "rvalues", code, {}, {name: "vector" for name in outputs})
    out = consume(api, "rvalues", {})["outputParameters"]
    assert out["f"] == ["lo", "hi", None, "lo"]
    assert (out["one"], out["when"]) == ("only", "2026-11-30")
    assert out["named"] == {"a": 1, "b": [2, "x"]}
    assert out["unnamed"] == [1, "a"]
    assert out["missing"] == [1, None, None, None]
    assert out["frame"] == {"k": ["u", "v"], "z": [True, None]}
    assert out["fit"]["coefficients"] == pytest.approx([37.285, -5.344], abs=1e-3)  # a vector: its names go
    assert out["fit"]["call"] == "lm(formula = mpg ~ wt, data = mtcars)"  # not data: what R prints for it
    assert out["square"].startswith("function (v) \nv^2")


def test_an_r_error_fails_its_record_and_the_batch_goes_on(api: Api) -> None:
    require_r()
    code = "half <- function(v) if (v == 2) stop('no twos: ', v) else v / 2\ny <- half(x)\nif (x == 4) z <- undefined"
    publish_r(api, "rsometimes", code, {"x": "integer"}, {"y": "numeric"})
    results = api.wait(
        "rsometimes", "v1", api.start_batch("rsometimes", "v1", [{"x": i} for i in range(6)], 3)
    )
    assert results["state"] == "Complete"
    records = results["batchExecutionResults"]
    assert [r["success"] for r in records] == [True, True, False, True, False, True]
    assert records[2]["errorMessage"] == "Error in half(x) : no twos: 2"
    assert records[4]["errorMessage"] == "Error: object 'undefined' not found"
    assert [r["outputParameters"].get("y") for r in records] == [0, 0.5, None, 1.5, None, 2.5]
    wrong = consume(api, "rsometimes", {"x": "two"})
    assert wrong["errorMessage"] == "InputError: input 'x' (integer): expected an integer, got 'two'"


def test_init_code_runs_once_and_its_failure_fails_the_execution(api: Api) -> None:
    require_r()
    publish_r(api, "rinit", "y <- x + offset", {"x": "numeric"}, {"y": "numeric"}, init_code="offset <- 10")
    assert consume(api, "rinit", {"x": 1})["outputParameters"] == {"y": 11}
    publish_r(api, "rbadinit", "y <- x", {"x": "numeric"}, {"y": "numeric"}, init_code="stop('no model')")
    results = api.wait("rbadinit", "v1", api.start_batch("rbadinit", "v1", [{"x": 1}, {"x": 2}], 1))
    assert results["state"] == "Failed"
    assert results["errorMessage"] == "initCode failed: RError: Error: no model"
    answer = consume(api, "rbadinit", {"x": 1})
    assert (answer["success"], answer["errorMessage"]) == (False, "initCode failed: RError: Error: no model")
    publish_r(api, "rbadcode", "y <- (", {}, {"y": "numeric"})
    assert consume(api, "rbadcode", {})["errorMessage"].startswith(
        "Error: 'code' is not valid R: <text>:2:0:"
    )


def test_console_output_and_files(api: Api) -> None:
    require_r()
    code = """
print(c(a = 1, b = 2)); cat("to stdout\\n"); message("to stderr"); y <- log(-1)
writeLines("kept", "kept.txt"); writeLines("not declared", "other.txt")
png("plot.png"); plot(mtcars$wt, mtcars$mpg); dev.off()
"""
    publish_r(api, "rconsole", code, {}, {"y": "numeric"}, files=["kept.txt", "plot.png", "absent.txt"])
    result = consume(api, "rconsole", {})
    assert result["success"] is True, result["errorMessage"]
    assert result["consoleOutput"] == (
        "a b \n1 2 \nto stdout\nto stderr\nWarning message:\nIn log(-1) : NaNs produced\n"
    )
    assert result["outputParameters"] == {"y": None}  # NaN
    assert result["changedFiles"] == ["kept.txt", "other.txt", "plot.png"]
    assert sorted(result["outputFiles"]) == ["kept.txt", "plot.png"]
    assert base64.b64decode(result["outputFiles"]["kept.txt"]) == b"kept\n"
    assert base64.b64decode(result["outputFiles"]["plot.png"])[:8] == PNG_SIGNATURE
    execution_id = api.start_batch("rconsole", "v1", [{}, {}], parallel=2)
    results = api.wait("rconsole", "v1", execution_id)
    assert results["batchExecutionResults"][1]["consoleOutput"] == result["consoleOutput"]
    assert api.get(f"/api/rconsole/v1/batch/{execution_id}/1/files").json() == ["kept.txt", "plot.png"]


def test_execution_timeout_replaces_the_worker_and_its_r(tmp_path: Path) -> None:
    require_r()
    with LocalMLServer(tmp_path, workers=1, extra_args=["--execution-timeout", "3"]) as server:
        api = Api(server)
        publish_r(api, "rhang", "Sys.sleep(x); y <- x", {"x": "numeric"}, {"y": "numeric"})
        results = api.wait("rhang", "v1", api.start_batch("rhang", "v1", [{"x": 0}, {"x": 60}, {"x": 0}], 1))
        first, hung, after = results["batchExecutionResults"]
        assert (first["success"], after["success"], hung["success"]) == (True, True, False)
        assert hung["errorMessage"] == "the execution ran longer than the server's execution timeout (3 s)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "crash"])
def test_restart_mid_batch_loses_no_committed_record(tmp_path: Path, sig: int) -> None:
    require_r()
    log = tmp_path / "ran.log"
    code = f'Sys.sleep(0.005)\ncat(sprintf("%d\\n", x), file = "{log}", append = TRUE)\ny <- x * 2L'
    server = LocalMLServer(tmp_path / "data", workers=2)
    with server:
        api = Api(server)
        publish_r(api, "rrestart", code, {"x": "integer"}, {"y": "integer"})
        execution_id = api.start_batch("rrestart", "v1", [{"x": i} for i in range(1500)], parallel=10)
        deadline = time.monotonic() + 90
        while api.status("rrestart", "v1", execution_id)["completedItemCount"] < 400:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        partial = api.status("rrestart", "v1", execution_id, partial=True)["batchExecutionResults"]
        committed = {r["outputParameters"]["y"] // 2 for r in partial}  # committed before the stop, at least
        server.stop(sig)
        done_before = {int(x) for x in log.read_text().split()}
        assert 400 <= len(done_before) < 1500, "the batch must be stopped mid-way"
        server.start()
        results = Api(server).wait("rrestart", "v1", execution_id, timeout=180)
    assert results["state"] == "Complete"
    assert results["completedItemCount"] == results["totalItemCount"] == 1500
    assert [r["outputParameters"]["y"] for r in results["batchExecutionResults"]] == [
        2 * i for i in range(1500)
    ]
    runs = collections.Counter(int(x) for x in log.read_text().split())
    assert set(runs) == set(range(1500))
    rerun = {i for i, n in runs.items() if n > 1}
    # only records that ran but were not committed when the server stopped may run again
    assert rerun <= done_before - committed, sorted(rerun & committed)
