"""The example DAGs run without a logical date, as Airflow 3 allows.

A run triggered through the REST API with ``"logical_date": null`` (and every asset-triggered run) has no
``logical_date``, ``ds``, ``ds_nodash``, ``ts``... nor ``data_interval_start``/``_end`` in its context: a
template naming one of them fails (the DAG's templates are strict) and a TaskFlow function that takes one
without a default fails with a ``TypeError``. The examples name their outputs by ``dag_run.run_after`` (or by
the logical date when a run has one).

The first tests read the examples in this process (fast). The last starts a real deployment (scheduler with the
LocalExecutor, triggerer, API server, DAG processor, as ``tests/test_deployment.py`` does) next to a local ML
Server, triggers every example through the REST API with ``"logical_date": null`` and checks that each run
succeeds and wrote its outputs.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from airflow_mlserver.server.process import LocalMLServer
from tests.deployment import AIRFLOW, COMPONENTS, Deployment, free_port, local_executor_env, wait_for
from tests.helpers import Api
from tests.test_examples import DAG_IDS, EXAMPLES, examples_settings

#: What a run's context holds only when the run has a logical date (Airflow 3.3's task runner).
LOGICAL_DATE_ONLY = frozenset(
    {
        "logical_date",
        "ds",
        "ds_nodash",
        "ts",
        "ts_nodash",
        "ts_nodash_with_tz",
        "data_interval_start",
        "data_interval_end",
        "prev_data_interval_start_success",
        "prev_data_interval_end_success",
    }
)
RUN_AFTER = datetime(2026, 12, 7, 19, 1, 8, 123456, tzinfo=UTC)
#: Small enough for a minute on two cores: four chunks of 500 records.
LARGE_CONF = {"rows": 2000, "chunk_rows": 500}


@pytest.fixture(scope="module")
def examples(airflow_db: Path) -> Iterator[dict[str, Any]]:
    """The example DAGs by id, parsed in this process (their folder on ``sys.path``, as Airflow puts it)."""
    from airflow.dag_processing.dagbag import DagBag

    sys.path.insert(0, str(EXAMPLES))
    try:
        bag = DagBag(dag_folder=str(EXAMPLES))
        assert bag.import_errors == {}
        yield bag.dags
    finally:
        sys.path.remove(str(EXAMPLES))


def _templates(value: Any) -> Iterator[str]:
    """The template strings in a templated field's value (inside lists and dicts too); no XComArg."""
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _templates(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _templates(item)


def _context_without_logical_date(dag: Any, task: Any) -> dict[str, Any]:
    """A task's template context as Airflow 3.3 builds it for a run with no logical date (what templates use)."""
    run_id = f"manual__{RUN_AFTER.isoformat()}"
    dag_run = SimpleNamespace(
        dag_id=dag.dag_id, run_id=run_id, run_after=RUN_AFTER, logical_date=None, conf={}, run_type="manual"
    )
    params = dag.params.dump()
    return {"dag": dag, "task": task, "dag_run": dag_run, "run_id": run_id, "params": params, "conf": {}}


def test_every_example_template_renders_without_a_logical_date(examples: dict[str, Any]) -> None:
    rendered = 0
    for dag_id in sorted(DAG_IDS):
        dag = examples[dag_id]
        env = dag.get_template_env()
        for task in dag.tasks:
            fields = getattr(task, "partial_kwargs", None)  # a mapped task: its arguments not mapped
            for field in task.template_fields:
                value = fields.get(field) if fields is not None else getattr(task, field, None)
                for template in _templates(value):
                    env.from_string(template).render(_context_without_logical_date(dag, task))
                    rendered += 1
    assert rendered >= 8  # the examples' folders and params: something was rendered


def test_no_example_task_needs_a_logical_date(examples: dict[str, Any]) -> None:
    """A TaskFlow function may take ``logical_date`` & co. only with a default: a run may have none."""
    for dag_id in sorted(DAG_IDS):
        for task in examples[dag_id].tasks:
            function = getattr(task, "python_callable", None)
            if function is None:
                continue
            for name, parameter in inspect.signature(function).parameters.items():
                if name in LOGICAL_DATE_ONLY:
                    assert parameter.default is not inspect.Parameter.empty, (
                        f"{dag_id}.{task.task_id} takes {name} without a default: "
                        "a run without a logical date has none"
                    )


def test_run_key_and_its_template_agree(examples: dict[str, Any]) -> None:
    """The large example's folder: the logical date when there is one, else the time the run was triggered."""
    import _common

    env = examples["mlserver_large_scoring"].get_template_env()
    dag_run = SimpleNamespace(run_after=RUN_AFTER)
    template = env.from_string(_common.RUN_KEY)
    assert template.render(dag_run=dag_run) == _common.run_key(dag_run) == "2026-12-07T190108"
    dated = datetime(2026, 3, 1, tzinfo=UTC)
    assert template.render(dag_run=dag_run, logical_date=dated, ds="2026-03-01") == "2026-03-01"
    assert _common.run_key(dag_run, dated) == "2026-03-01"


# --- A real deployment: every example triggered through the REST API with "logical_date": null -------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, LocalMLServer, Path]]:
    """One deployment of the examples for the module, every example unpaused. Its scheduler starts with
    ``use_job_schedule`` off, so it creates no scheduled or asset-triggered runs (the daily example would start
    a 200,000-record run of its own): only the runs the test triggers run."""
    if shutil.which("Rscript") is None or importlib.util.find_spec("rpy2") is None:
        pytest.fail(
            "R or rpy2 is missing: `make test` installs both (Debian's r-base-core, the r extra's rpy2)."
        )
    storage = tmp_path_factory.mktemp("nold-storage")
    home = tmp_path_factory.mktemp("nold-airflow")
    port = free_port()
    with LocalMLServer(tmp_path_factory.mktemp("nold-mlserver"), workers=2) as ml:
        env = local_executor_env(
            home,
            port,
            EXAMPLES,
            **examples_settings(ml, storage),
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        )
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        deploy = Deployment(home, env, port)
        for component in COMPONENTS:
            deploy.start(component)
        try:
            deploy.wait_for_dags(DAG_IDS)
            for dag_id in DAG_IDS:
                deploy.unpause(dag_id)
            yield deploy, ml, storage
        finally:
            for component in list(deploy.procs):
                deploy.stop(component, signal.SIGKILL)


def _succeeded(deploy: Deployment, dag_id: str, run_id: str, timeout: float = 150) -> dict[str, Any]:
    """Wait for a run to end; it must have succeeded with no logical date. Answer it."""
    try:
        run = deploy.wait_run(dag_id, run_id, timeout)
    except AssertionError as exc:
        states = {
            (ti["task_id"], ti["map_index"]): ti["state"] for ti in deploy.task_instances(dag_id, run_id)
        }
        raise AssertionError(f"{exc}: {states}\n{deploy.logs()}") from None
    failed = [ti["task_id"] for ti in deploy.task_instances(dag_id, run_id) if ti["state"] != "success"]
    assert run["state"] == "success" and not failed, f"{dag_id} {run_id}: {failed}\n{deploy.logs()}"
    assert run["logical_date"] is None, run
    return run


def _stamp(run: dict[str, Any], form: str) -> str:
    """The run's ``run_after`` as the examples name folders by it."""
    return datetime.fromisoformat(run["run_after"]).astimezone(UTC).strftime(form)


def _check_batch_scoring(storage: Path, run: dict[str, Any]) -> None:
    stamp = _stamp(run, "%Y%m%dT%H%M%S")  # RUN_STAMP
    frame = pd.read_parquet(storage / "scores" / stamp / "mtcars.parquet")
    assert len(frame) == 32 and frame["success"].all()
    folder = storage / "artifacts" / stamp
    assert (folder / "manifest.json").is_file()
    assert sorted(int(p.parent.name) for p in folder.glob("*/answer.csv")) == list(range(32))


def _check_r(storage: Path, run: dict[str, Any]) -> None:
    stamp = _stamp(run, "%Y%m%dT%H%M%S")
    for fmt in ("csv", "tsv"):
        frame = pd.read_parquet(storage / "r" / stamp / f"mtcars-{fmt}.parquet")
        assert len(frame) == 32 and frame["success"].all()
        folder = storage / "r" / stamp / f"artifacts-{fmt}"
        assert (folder / "manifest.json").is_file()
        assert sorted(int(p.parent.name) for p in folder.glob("*/Histogram.png")) == list(range(32))


def _check_large(deploy: Deployment, storage: Path, run: dict[str, Any]) -> Path:
    """The run's input, merged results and borderline files, in a folder named by its run_after."""
    folder = storage / "large" / _stamp(run, "%Y-%m-%dT%H%M%S")  # RUN_KEY without a logical date
    assert len(list((folder / "input").glob("part-*.parquet"))) == 4
    merged = pd.read_parquet(folder / "scores.parquet")
    assert len(merged) == 2000 and merged["success"].all()
    assert merged["record"].tolist() == list(range(2000))
    borderline = merged[(merged["answer"] > 0.45) & (merged["answer"] < 0.55)]
    manifest = json.loads((folder / "borderline" / "manifest.json").read_text())
    assert manifest["counts"]["copied"] == len(borderline) > 0 and manifest["counts"]["failed"] == 0
    source = {"source_dag_id": "mlserver_large_scoring", "source_run_id": run["dag_run_id"]}
    (event,) = deploy.request("GET", "/assets/events", params=source)["asset_events"]
    extra = event["extra"]  # what the merge task published: no date, the run's id
    assert (extra["date"], extra["run_id"], extra["records"]) == (None, run["dag_run_id"], 2000), extra
    assert extra["path"].endswith(f"/large/{folder.name}/scores.parquet"), extra
    return folder / "scores.parquet"


def _check_external(storage: Path, execution_id: str) -> None:
    folder = storage / "external" / execution_id
    assert (folder / "manifest.json").is_file()
    assert sorted(int(p.parent.name) for p in folder.glob("*/out.txt")) == list(range(6))


def test_every_example_runs_without_a_logical_date(deployment: Any) -> None:
    deploy, ml, storage = deployment
    started = time.monotonic()
    api = Api(ml)  # a batch started outside Airflow, for the sensor's example
    api.publish("nold_svc", "v1", 'y = x * 2\nopen("out.txt", "w").write(str(y))\n', {"x": "numeric"},
                {"y": "numeric"}, files=["out.txt"])  # fmt: skip
    execution_id = api.start_batch("nold_svc", "v1", [{"x": float(i)} for i in range(6)], 2)
    external = {"execution_id": execution_id, "service_name": "nold_svc", "service_version": "v1"}
    runs = {
        "mlserver_large_scoring": deploy.trigger("mlserver_large_scoring", LARGE_CONF),
        "mlserver_batch_scoring": deploy.trigger("mlserver_batch_scoring", {}),
        "mlserver_r_manual_transmission": deploy.trigger("mlserver_r_manual_transmission", {}),
        "mlserver_external_batch_sensor": deploy.trigger("mlserver_external_batch_sensor", external),
    }
    done = {dag_id: _succeeded(deploy, dag_id, run_id) for dag_id, run_id in runs.items()}
    _check_batch_scoring(storage, done["mlserver_batch_scoring"])
    _check_r(storage, done["mlserver_r_manual_transmission"])
    _check_external(storage, execution_id)
    scores = _check_large(deploy, storage, done["mlserver_large_scoring"])
    # one batch execution per chunk, whatever retried (Airflow 3.3.2's scheduler may fail a deferred task whose
    # trigger fired before it saw the deferral, apache/airflow#67287; the retry reattaches)
    for service, version, executions in (
        ("TxService", "1.0", 1),
        ("mtService", "v1.0.0", 2),
        ("TxScore", "2.0", 4),
    ):
        assert len(api.get(f"/api/{service}/{version}/batch").json()) == executions, service

    # The report: triggered by hand (the newest scores), and as the scheduler triggers it on the asset event the
    # large run published (asset-triggered runs have no logical date either). The scheduler now creates runs:
    # the daily example is paused first, so that it starts none of its own.
    deploy.request("PATCH", "/dags/mlserver_large_scoring", json={"is_paused": True})
    deploy.stop("scheduler")
    deploy.start("scheduler", env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True"})
    manual = deploy.trigger("mlserver_scores_report", {})
    asset_run = wait_for(
        "the asset-triggered report run",
        lambda: [
            r["dag_run_id"]
            for r in deploy.request("GET", "/dags/mlserver_scores_report/dagRuns")["dag_runs"]
            if r["run_type"] == "asset_triggered"
        ],
        timeout=60,
    )
    for run_id in [manual, *asset_run]:
        _succeeded(deploy, "mlserver_scores_report", run_id, timeout=90)
        report = deploy.xcom("mlserver_scores_report", run_id, "report")
        assert report["path"].endswith(f"/large/{scores.parent.name}/scores.parquet"), report
        assert (report["records"], report["failed"]) == (2000, 0), report
    print(f"every example ran without a logical date in {time.monotonic() - started:.0f} s")
