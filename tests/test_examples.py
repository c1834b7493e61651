"""The example DAGs: integrity (in-process) and end to end (``airflow dags test``, as ``make demo`` runs it)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api

EXAMPLES = Path(__file__).resolve().parent.parent / "dags_examples"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_IDS = {
    "mlserver_batch_scoring",
    "mlserver_collect_finished_batches",
    "mlserver_external_batch_sensor",
    "mlserver_large_scoring",
    "mlserver_r_manual_transmission",
    "mlserver_scores_report",
}
PUBLIC = (
    "airflow_mlserver.operators.",
    "airflow_mlserver.sensors.",
    "airflow_mlserver.triggers.",
    "airflow_mlserver.hooks.",
    "airflow_mlserver.exceptions",
)


def test_example_dags_import_cleanly(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    sys.path.insert(0, str(EXAMPLES))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bag = DagBag(dag_folder=str(EXAMPLES))
    finally:
        sys.path.remove(str(EXAMPLES))
    ours = [w for w in caught if "dags_examples" in w.filename or "airflow_mlserver" in w.filename]
    assert ours == [], [str(w.message) for w in ours]
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert dag.tags and "example" in dag.tags
        assert dag.doc_md, f"{dag_id} has no documentation"
        dag.validate()
        for task in dag.tasks:  # a cycle would show as a task upstream of itself
            assert task.task_id not in {t.task_id for t in task.get_flat_relatives(upstream=True)}


def test_example_dags_use_only_the_public_api() -> None:
    for path in EXAMPLES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_mlserver"):
                if path.name == "demo.py" and node.module == "airflow_mlserver.server.process":
                    continue  # the demo starts the local server; it is not a DAG
                assert node.module.startswith(PUBLIC), f"{path.name} imports {node.module}"


def examples_settings(server: LocalMLServer, storage: Path) -> dict[str, str]:
    """What the examples need in Airflow's environment: ``mlserver_default`` for ``server``, ``storage`` to write
    to (``tests/test_no_logical_date.py`` gives its deployment the same)."""
    return {
        "AIRFLOW_CONN_MLSERVER_DEFAULT": (
            f"mlserver://admin:{quote(server.password, safe='')}@127.0.0.1:{server.port}"
        ),
        "MLSERVER_EXAMPLES_STORAGE": storage.as_uri(),
    }


@pytest.fixture(scope="module")
def examples_env(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], LocalMLServer, Path]]:
    storage = tmp_path_factory.mktemp("examples-storage")
    with LocalMLServer(tmp_path_factory.mktemp("examples-mlserver"), workers=2) as server:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path_factory.mktemp("examples-airflow")),
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **examples_settings(server, storage),
        }
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        yield env, server, storage


def _dags_test(env: dict[str, str], dag_id: str, *args: str) -> str:
    run = subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    assert f"dag_id={dag_id}" in run.stdout and "state=success" in run.stdout, run.stdout[-3000:]
    return run.stdout


def _xcom(env: dict[str, str], dag_id: str, task_id: str, key: str) -> Any:
    """The value ``task_id`` of the newest run of ``dag_id`` pushed as ``key`` (from the SQLite metadata DB)."""
    with contextlib.closing(sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")) as db:
        (value,) = db.execute(
            "SELECT x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id WHERE x.dag_id = ? AND x.task_id = ?"
            " AND x.key = ? ORDER BY r.id DESC LIMIT 1",
            (dag_id, task_id, key),
        ).fetchone()
    return json.loads(value) if isinstance(value, str | bytes) else value


def test_batch_scoring_end_to_end(examples_env: Any) -> None:
    env, server, storage = examples_env
    out = _dags_test(env, "mlserver_batch_scoring")
    assert "Scored 32 cars (0 failed)" in out
    assert "Scored 32 records with web service 'TxService' version '1.0' in " in out
    assert "Published web service 'TxService' version '1.0' (2 inputs, 1 output)" in out
    assert "Web service 'TxService' version '1.0': published by this run (content sha256:" in out
    assert _xcom(env, "mlserver_batch_scoring", "publish", "published") is True
    digest = _xcom(env, "mlserver_batch_scoring", "publish", "digest")
    (results,) = storage.glob("scores/*/mtcars.parquet")
    frame = pd.read_parquet(results)
    assert len(frame) == 32 and frame["success"].all()
    # the seed's check value: manualTransmission(120, 2.8) = 0.6418125, for the car with hp=109, wt=2.78 close by
    volvo = frame.set_index("model").loc["Volvo 142E", "answer"]
    assert abs(volvo - 0.5857) < 1e-4
    assert abs(Api(server).post("/api/TxService/1.0", json={"hp": 120, "wt": 2.8}).json()["outputParameters"]["answer"]
               - 0.6418125) < 1e-7  # fmt: skip
    (manifest,) = storage.glob("artifacts/*/manifest.json")  # one per run, beside <record>/<file name>
    files = {p.name for p in manifest.parent.rglob("*") if p.is_file()}
    assert files == {"answer.csv", "histogram.png", "manifest.json"}
    assert sorted(int(p.parent.name) for p in manifest.parent.rglob("answer.csv")) == list(range(32))
    assert (next(manifest.parent.rglob("histogram.png")).read_bytes()[:8]) == b"\x89PNG\r\n\x1a\n"
    volvo_record = int(frame.set_index("model").loc["Volvo 142E", "record"])  # folders: the results' records
    answer = (manifest.parent / str(volvo_record) / "answer.csv").read_text()
    assert answer == f"hp,wt,answer\n109.0,2.78,{volvo:.7f}\n"

    # A second run trains again and publishes nothing: the same content, the same digest, the same answers.
    out = _dags_test(env, "mlserver_batch_scoring")
    assert (
        f"Publishing nothing: web service 'TxService' version '1.0' exists with content sha256:{digest}"
        in out
    )
    assert f"found with the same content (content sha256:{digest}), nothing published" in out
    assert _xcom(env, "mlserver_batch_scoring", "publish", "published") is False
    assert _xcom(env, "mlserver_batch_scoring", "publish", "digest") == digest
    assert [s["version"] for s in Api(server).get("/services/TxService").json()] == ["1.0"]
    rerun = sorted(set(storage.glob("scores/*/mtcars.parquet")) - {results})
    assert len(rerun) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(rerun[0]), frame)


def test_external_batch_sensor(examples_env: Any) -> None:
    env, server, storage = examples_env
    api = Api(server)
    if api.get("/services/TxService/1.0").status_code != 200:
        _dags_test(env, "mlserver_batch_scoring")
    execution_id = api.start_batch("TxService", "1.0", [{"hp": 100.0 + i, "wt": 2.5} for i in range(6)], 2)
    _dags_test(env, "mlserver_external_batch_sensor", "-c", f'{{"execution_id": "{execution_id}"}}')
    manifest = storage / "external" / execution_id / "manifest.json"
    assert manifest.is_file()
    assert sum(1 for _ in (storage / "external" / execution_id).rglob("answer.csv")) == 6


def test_large_scoring_in_chunks_reruns_deterministically_and_feeds_the_report(examples_env: Any) -> None:
    env, _, storage = examples_env
    conf = '{"rows": 2000, "chunk_rows": 500}'
    out = _dags_test(env, "mlserver_large_scoring", "2026-03-01", "-c", conf)
    assert "Published web service 'TxScore' version '2.0'" in out
    for map_index in range(4):  # each mapped chunk names its map index, and its chunk of its own records
        assert f"map index {map_index}: Started batch execution " in out
        assert (
            f"map index {map_index}: Scored 500 records with web service 'TxScore' version '2.0' in " in out
        )
    assert "for this task's only chunk (500 records)" in out
    merged = storage / "large" / "2026-03-01" / "scores.parquet"
    first = pd.read_parquet(merged)
    assert len(first) == 2000 and first["success"].all()
    assert first["car_id"].tolist() == list(range(2000))  # chunks merged in input order
    assert first["record"].tolist() == list(range(2000))  # numbered across the chunks
    assert len(list((storage / "large" / "2026-03-01" / "scores").glob("part-*.parquet"))) == 4
    # one artifacts task copied the borderline cars' files of all four chunks, by their merged record numbers
    borderline = first[(first["answer"] > 0.45) & (first["answer"] < 0.55)]
    folder = storage / "large" / "2026-03-01" / "borderline"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["executions"]) == 4 and manifest["records_without_artifacts"] == []
    assert [e["first_record"] for e in manifest["executions"]] == [0, 500, 1000, 1500]
    assert manifest["counts"]["copied"] == len(borderline) > 5 and manifest["counts"]["failed"] == 0
    assert (
        sorted(int(p.parent.name) for p in folder.glob("*/borderline.csv")) == borderline["record"].tolist()
    )
    for row in borderline.itertuples():
        assert (
            (folder / str(row.record) / "borderline.csv")
            .read_text()
            .startswith(f"hp,wt,answer\n{float(row.hp)!r},")
        )
    out = _dags_test(env, "mlserver_large_scoring", "2026-03-01", "-c", conf)  # a rerun of the same date
    assert "Publishing nothing: web service 'TxScore' version '2.0' exists with content sha256:" in out
    pd.testing.assert_frame_equal(pd.read_parquet(merged), first)
    rerun = json.loads((folder / "manifest.json").read_text())
    assert rerun["counts"]["skipped"] == len(borderline) and rerun["counts"]["copied"] == 0
    out = _dags_test(env, "mlserver_scores_report")
    assert "records             2000" in out or "records  2000" in out or "2000" in out


def test_r_manual_transmission_end_to_end(examples_env: Any) -> None:
    """The R seed: an R service with its glm model (RDS), its check value, CSV and TSV batches, PNG artifacts."""
    if shutil.which("Rscript") is None or importlib.util.find_spec("rpy2") is None:
        pytest.fail(
            "R or rpy2 is missing: `make test` installs both (Debian's r-base-core, the r extra's rpy2)."
        )
    env, server, storage = examples_env
    out = _dags_test(env, "mlserver_r_manual_transmission")
    assert "Web service 'mtService' version 'v1.0.0': published by this run (content sha256:" in out
    assert "manualTransmission(120, 2.8) = 0.6418125\n" in out  # the seed's value, to 7 digits
    assert "Scored 32 cars from mtcars.csv and from mtcars.tsv, the same answers" in out
    service = Api(server).get("/services/mtService/v1.0.0").json()[0]
    assert (service["runtimeType"], service["outputFileNames"]) == ("R", ["Histogram.png"])
    (model,) = storage.glob("r/*/carsModel.rds")  # what saveRDS wrote, published as the object carsModel
    assert model.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as saveRDS compresses
    for fmt in ("csv", "tsv"):
        (results,) = storage.glob(f"r/*/mtcars-{fmt}.parquet")
        frame = pd.read_parquet(results)
        assert len(frame) == 32 and frame["success"].all()
        assert (
            abs(frame.set_index("model").loc["Volvo 142E", "answer"] - 0.5857) < 1e-4
        )  # as R's glm predicts
        (manifest,) = storage.glob(f"r/*/artifacts-{fmt}/manifest.json")
        pngs = sorted(manifest.parent.glob("*/Histogram.png"), key=lambda p: int(p.parent.name))
        assert [int(p.parent.name) for p in pngs] == list(range(32))  # one per record
        assert {p.name for p in manifest.parent.rglob("*") if p.is_file()} == {
            "Histogram.png",
            "manifest.json",
        }
        for png in pngs:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
