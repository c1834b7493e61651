"""Microsoft's own Python client (``azureml-model-management-sdk``) runs the seed notebook's workflow here.

The client publishes through a session and a snapshot (the model object travels as dill bytes), consumes
through the function it generates from the service's ``operationId``, and drives a batch execution end
to end: start, poll, per-record outputs and artifacts, find it again, cancel. The only change to the
client is :mod:`tests.msclient_shim`, which makes its consume-function builder work on Python 3.11.

The service functions below are module-level on purpose: the client sends their source
(``inspect.getsource``) as the service's ``code`` and ``initCode``. They are also called locally, so
that every answer of the server is compared with what the same code computes here.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from azureml.common.http_client import HttpException
from azureml.deploy import DeployClient
from azureml.deploy.server import MLServer

from airflow_mlserver.client.mlserver import MLServerClient
from airflow_mlserver.client.models import ServiceDefinition
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, wait_for
from tests.msclient_shim import patched_client

EXAMPLES = Path(__file__).resolve().parent.parent / "dags_examples"
sys.path.insert(0, str(EXAMPLES))  # the R example's service code, as its DAG publishes it
import mtcars_r_service  # noqa: E402

# The seed's model: logistic regression am ~ hp + wt on mtcars (R's glm coefficients). A plain dict:
# dill sends it by value, so the server's workers load it without importing anything from the tests.
cars_model = {"intercept": 18.86630, "hp": 0.03626, "wt": -8.08348, "scale": 1.0}

# Set by ``init`` (the service's initCode); 0 until then, which would answer 0.5 for every record.
coef_scale = 0.0


def init():
    global coef_scale
    coef_scale = float(cars_model["scale"])


def manualTransmission(hp, wt):
    import math

    import pandas as pd

    log_odds = coef_scale * (cars_model["intercept"] + cars_model["hp"] * hp + cars_model["wt"] * wt)
    answer = pd.DataFrame({"hp": [hp], "wt": [wt], "probability": [1.0 / (1.0 + math.exp(-log_odds))]})
    answer.to_csv("answer.csv", index=False)
    return answer


def slowTransmission(hp, wt):
    import math
    import time

    time.sleep(0.3)
    return 1.0 / (1.0 + math.exp(-(18.8663 + 0.03626 * hp - 8.08348 * wt)))


# hp and wt of the first ten cars of mtcars.
RECORDS = pd.DataFrame(
    {
        "hp": [110, 110, 93, 110, 175, 105, 245, 62, 95, 123],
        "wt": [2.620, 2.875, 2.320, 3.215, 3.440, 3.460, 3.570, 3.190, 3.150, 3.440],
    }
)


def local_answer(hp: float, wt: float, folder: Path) -> tuple[pd.DataFrame, bytes]:
    """What the service code computes for one record, run here: its output and the bytes of answer.csv."""
    init()
    saved = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.chdir(folder)
        answer = manualTransmission(float(hp), float(wt))
    finally:
        os.chdir(saved)
    return answer, (folder / "answer.csv").read_bytes()


def wait_complete(batch: Any, timeout: float = 120) -> Any:
    """Poll ``batch.results()`` (as the seed notebook does) until the execution is Complete."""
    deadline = time.monotonic() + timeout
    while True:
        results = batch.results()
        state = results.state.lower()
        if state == "complete":
            return results
        assert state not in ("failed", "canceled"), f"batch ended {results.state}"
        assert time.monotonic() < deadline, f"batch still {results.state} after {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(mlserver: LocalMLServer) -> Iterator[Any]:
    with patched_client():
        yield DeployClient(mlserver.url, use=MLServer, auth=(mlserver.username, mlserver.password))


@pytest.fixture(scope="module")
def tx_name(client: Any) -> Iterator[str]:
    """The seed's TxService, version 1.0, published with the client's fluent API."""
    name = f"TxService{uuid.uuid4().hex[:8]}"
    (
        client.service(name)
        .version("1.0")
        .code_fn(manualTransmission, init)
        .inputs(hp=float, wt=float)
        .outputs(answer=pd.DataFrame)
        .models(cars_model=cars_model)
        .artifacts(["answer.csv"])
        .description("The seed notebook's manual-transmission model")
        .deploy()
    )
    yield name
    for service in client.list_services(name):
        client.delete_service(name, version=service["version"])


def test_publish_and_consume(client: Any, tx_name: str, api: Api, tmp_path: Path) -> None:
    svc = client.get_service(tx_name, version="1.0")
    caps = svc.capabilities()
    assert caps["name"] == tx_name
    assert caps["version"] == "1.0"
    assert caps["operation_id"] == "manualTransmission"
    assert caps["inputs"] == [{"name": "hp", "type": "numeric"}, {"name": "wt", "type": "numeric"}]
    assert caps["outputs"] == [{"name": "answer", "type": "data.frame"}]
    assert caps["artifacts"] == ["answer.csv"]
    assert caps["runtime"] == "Python"
    assert caps["published_by"] == "admin"

    # What the client sent: the function's source, then the call assigning the first output.
    published = api.get(f"/services/{tx_name}/1.0").json()[0]
    assert published["code"].startswith("def manualTransmission(hp, wt):")
    assert published["code"].rstrip().endswith("answer = manualTransmission(hp, wt)")
    assert published["initCode"].rstrip().endswith("init()")
    # The client deleted its session and snapshot right away; the service kept the model object.
    assert api.get(f"/snapshots/{published['snapshotId']}").status_code == 404

    # The consume function the client generated from operationId takes the inputs positionally.
    res = svc.manualTransmission(120, 2.8)
    assert res.error == ""
    expected, csv = local_answer(120, 2.8, tmp_path)
    assert res.output("answer")["probability"][0] == pytest.approx(0.6418125, abs=1e-3)  # the seed's value
    pd.testing.assert_frame_equal(res.output("answer"), expected)
    assert res.artifact("answer.csv") == csv
    assert pd.read_csv(io.BytesIO(res.artifact("answer.csv"))).shape == (1, 3)

    # It is a real function of (hp, wt): keywords work too, and it forwards exactly those inputs.
    assert list(inspect.signature(svc.manualTransmission).parameters) == ["hp", "wt"]
    by_keyword = svc.manualTransmission(wt=2.8, hp=120)
    pd.testing.assert_frame_equal(by_keyword.output("answer"), expected)


def test_batch_workflow(client: Any, tx_name: str, tmp_path: Path) -> None:
    svc = client.get_service(tx_name, version="1.0")
    batch = svc.batch(RECORDS, parallel_count=3)
    assert batch.execution_id is None
    batch = batch.start()
    execution_id = batch.execution_id
    assert execution_id

    results = wait_complete(batch)
    assert results.state == "Complete"
    assert results.total_item_count == len(RECORDS)
    assert results.completed_item_count == len(RECORDS)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for i, (hp, wt) in enumerate(zip(RECORDS["hp"], RECORDS["wt"], strict=True)):
        expected, csv = local_answer(hp, wt, tmp_path / "local" / str(i))
        record = results.execution(i)
        assert record.error == ""
        pd.testing.assert_frame_equal(record.output("answer"), expected)
        assert batch.list_artifacts(i) == ["answer.csv"]
        assert batch.artifact(i, "answer.csv") == csv
        # the client's @execution wrapper drops keyword arguments: pass destination positionally
        paths = batch.download(i, "answer.csv", str(downloads))
        assert paths == [str(downloads / "answer.csv")]
        assert (downloads / "answer.csv").read_bytes() == csv

    # The execution can be found again: by listing the service's executions, or by its id.
    assert execution_id in svc.list_batch_executions()
    again = svc.get_batch(execution_id)
    assert again.execution_id == execution_id
    found = again.results(show_partial_results=False)
    assert found.state == "Complete"
    assert found.completed_item_count == len(RECORDS)
    last = len(RECORDS) - 1
    expected, _ = local_answer(RECORDS["hp"][last], RECORDS["wt"][last], tmp_path / "again")
    pd.testing.assert_frame_equal(found.execution(last).output("answer"), expected)


def test_cancel_batch(client: Any, api: Api) -> None:
    name = f"SlowTx{uuid.uuid4().hex[:8]}"
    svc = client.deploy_service(
        name,
        version="1.0",
        code_fn=slowTransmission,
        inputs={"hp": float, "wt": float},
        outputs={"probability": float},
        description="0.3 s per record",
    )
    try:
        records = pd.concat([RECORDS, RECORDS], ignore_index=True)  # 20 records, one at a time: ~6 s
        batch = svc.batch(records, parallel_count=1).start()
        deadline = time.monotonic() + 60
        while batch.results().completed_item_count < 1:  # running for sure
            assert time.monotonic() < deadline
            time.sleep(0.05)
        batch.cancel()

        status = api.status(name, "1.0", batch.execution_id)
        assert status["state"] == "Canceled"
        # the record in flight finishes and is committed; no further record starts
        wait_for("the workers to be idle", api.workers_idle, timeout=30, interval=0.05)
        settled = api.status(name, "1.0", batch.execution_id, partial=True)
        assert settled["state"] == "Canceled"
        assert settled["completedItemCount"] < len(records)
        assert (
            api.status(name, "1.0", batch.execution_id)["completedItemCount"] == settled["completedItemCount"]
        )

        # The client reads the same state, and the records that did run have their real answers.
        results = batch.results()
        assert results.state == "Canceled"
        first = results.execution(0)
        assert first.output("probability") == pytest.approx(slowTransmission(110.0, 2.62))
    finally:
        assert client.delete_service(name, version="1.0") is True


def test_list_get_latest_and_delete(client: Any, tx_name: str, tmp_path: Path) -> None:
    v2 = client.deploy_service(
        tx_name,
        version="2.0",
        description="second version",
        code_fn=manualTransmission,
        init_fn=init,
        models={"cars_model": cars_model},
        inputs={"hp": float, "wt": float},
        outputs={"answer": pd.DataFrame},
        artifacts=["answer.csv"],
    )
    assert v2.capabilities()["version"] == "2.0"

    everything = client.list_services()
    assert {(s["name"], s["version"]) for s in everything} >= {(tx_name, "1.0"), (tx_name, "2.0")}
    assert [s["version"] for s in client.list_services(tx_name)] == ["1.0", "2.0"]
    only = client.list_services(tx_name, version="2.0")
    assert [(s["name"], s["version"], s["description"]) for s in only] == [(tx_name, "2.0", "second version")]

    # Without a version, get_service answers the latest one.
    latest = client.get_service(tx_name)
    assert latest.capabilities()["version"] == "2.0"
    expected, _ = local_answer(150, 3.1, tmp_path)
    pd.testing.assert_frame_equal(latest.manualTransmission(150, 3.1).output("answer"), expected)

    assert client.delete_service(tx_name, version="2.0") is True
    assert [s["version"] for s in client.list_services(tx_name)] == ["1.0"]
    assert client.get_service(tx_name).capabilities()["version"] == "1.0"
    with pytest.raises(HttpException) as raised:
        client.delete_service(tx_name, version="2.0")
    assert raised.value.status == 404


def test_bearer_token_auth(mlserver: LocalMLServer, tx_name: str) -> None:
    """A client given just an access token (no credentials) works too."""
    login = {"username": mlserver.username, "password": mlserver.password}
    token = requests.post(f"{mlserver.url}/login", json=login, timeout=30).json()["access_token"]
    with patched_client():
        by_token = DeployClient(mlserver.url, use=MLServer, auth=token)
        svc = by_token.get_service(tx_name, version="1.0")
    assert svc.manualTransmission(120, 2.8).output("answer")["probability"][0] == pytest.approx(
        0.6418, abs=1e-3
    )


def test_batch_of_an_r_service(client: Any, mlserver: LocalMLServer, tmp_path: Path) -> None:
    """The R seed's service (glm model as RDS, published with this provider's client) consumed in batch by
    Microsoft's client, from records read as the seed reads them (``mtcars.tsv``, tab-separated)."""
    rscript = shutil.which("Rscript")
    if rscript is None or importlib.util.find_spec("rpy2") is None:
        pytest.fail(
            "R or rpy2 is missing: `make test` installs both (Debian's r-base-core, the r extra's rpy2)."
        )
    records = pd.read_csv(EXAMPLES / "data" / "mtcars.tsv", sep="\t")[["hp", "wt"]].head(6).astype(float)
    model, expected = tmp_path / "carsModel.rds", tmp_path / "expected.txt"
    fit = (  # the seed's model, and what it predicts for the records, computed by R here
        "m <- glm(formula = am ~ hp + wt, data = mtcars, family = binomial); saveRDS(m, file = a[[1]]); "
        "r <- read.csv(a[[2]], sep = '\\t')[1:6, c('hp', 'wt')]; "
        "writeLines(sprintf('%.15g', predict(m, r, type = 'response')), a[[3]])"
    )
    subprocess.run(
        [rscript, "--vanilla", "-e", f"a <- commandArgs(TRUE); {fit}", str(model),
         str(EXAMPLES / "data" / "mtcars.tsv"), str(expected)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    answers = [float(line) for line in expected.read_text().split()]
    name = f"mtService{uuid.uuid4().hex[:8]}"
    settings = ConnectionSettings("ml", mlserver.url, mlserver.username, mlserver.password)
    with MLServerClient(settings) as ours:
        ours.publish_service(
            name,
            "v1.0.0",
            ServiceDefinition(
                mtcars_r_service.CODE, {"hp": "numeric", "wt": "numeric"}, {"answer": "numeric"},
                mtcars_r_service.INIT_CODE, ["Histogram.png"], "manualTransmission", runtime_type="R",
            ),
            model_objects={"carsModel": model},
        )  # fmt: skip
    try:
        svc = client.get_service(name, version="v1.0.0")
        assert svc.capabilities()["runtime"] == "R"
        assert svc.manualTransmission(120, 2.8).output("answer") == pytest.approx(0.6418125, abs=5e-8)
        batch = svc.batch(records, parallel_count=3).start()
        results = wait_complete(batch)
        assert results.total_item_count == results.completed_item_count == len(records)
        for i, answer in enumerate(answers):
            record = results.execution(i)
            assert record.error == ""
            assert record.output("answer") == pytest.approx(answer, rel=1e-12)
            assert batch.list_artifacts(i) == ["Histogram.png"]
            assert batch.artifact(i, "Histogram.png")[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        assert client.delete_service(name, version="v1.0.0") is True
