"""Crash safety in a real Airflow deployment: scheduler (LocalExecutor), triggerer, API server, DAG processor.

The fixture starts the processes as ``airflow standalone`` would (SQLite, private ``AIRFLOW_HOME``) next to
a local ML Server, and the tests act on them from outside: they trigger runs and mark tasks through the REST
API and kill or restart the real processes. Nothing of the provider is called directly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_mlserver.server.process import LocalMLServer
from tests.deployment import (
    AIRFLOW,
    COMPONENTS,
    Deployment,
    free_port,
    local_executor_env,
    slow_batch,
    wait_for,
)
from tests.helpers import Api

DAGS = Path(__file__).parent / "deploy_dags"
HOLD = 20  # seconds the held server keeps a start's answer


@pytest.fixture(scope="module")
def ml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    with LocalMLServer(tmp_path_factory.mktemp("deploy-mlserver"), workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def held_ml(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    """A server that starts each batch execution, then holds the start's answer for 20 s."""
    faults = ["--faults", f"hold-start:{HOLD}s:1"]
    with LocalMLServer(tmp_path_factory.mktemp("held-mlserver"), workers=1, extra_args=faults) as server:
        yield server


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, ml: LocalMLServer, held_ml: LocalMLServer
) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("airflow-deployment")
    port = free_port()
    env = local_executor_env(
        home,
        port,
        DAGS,
        AIRFLOW_CONN_MLSERVER_DEFAULT=f"mlserver://admin:{ml.password}@127.0.0.1:{ml.port}",
        AIRFLOW_CONN_MLSERVER_HELD=f"mlserver://admin:{held_ml.password}@127.0.0.1:{held_ml.port}",
    )
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    deploy = Deployment(home, env, port)
    for component in COMPONENTS:
        deploy.start(component)
    try:
        deploy.wait_for_dags(["mlserver_deploy_in_worker", "mlserver_deploy_deferrable"])
        yield deploy
    finally:
        for component in list(deploy.procs):
            deploy.stop(component, signal.SIGKILL)


def _wait_for_execution(api: Api, service: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = api.get(f"/api/{service}/v1/batch").json()
        if ids:
            execution_id: str = ids[0]
            return execution_id
        time.sleep(0.2)
    raise AssertionError(f"no execution of {service} started")


def _kill_task_process(ti: dict[str, Any]) -> None:
    """SIGKILL the process that runs this task instance, as a worker crash would."""
    task_process = subprocess.run(
        ["pgrep", "-f", f"^airflow worker -- {ti['id']}$"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(task_process) == 1, task_process
    os.kill(int(task_process[0]), signal.SIGKILL)


def test_worker_crash_retry_reattaches(deployment: Deployment, ml: LocalMLServer, tmp_path: Path) -> None:
    api, conf = slow_batch(ml, tmp_path, "crash_svc", 150)  # about 15 s of work: still running at the kill
    run_id = deployment.trigger("mlserver_deploy_in_worker", conf)
    execution_id = _wait_for_execution(api, "crash_svc")
    ti = deployment.wait_task("mlserver_deploy_in_worker", run_id, {"running"})
    assert api.status("crash_svc", "v1", execution_id)["state"] in ("Pending", "Running")
    _kill_task_process(ti)
    done = deployment.wait_task("mlserver_deploy_in_worker", run_id, {"success", "failed"})
    assert done["state"] == "success", deployment.logs()
    assert done["try_number"] == 2
    assert api.get("/api/crash_svc/v1/batch").json() == [execution_id]  # reattached: one execution only
    results = pd.read_parquet(tmp_path / "out.parquet")
    assert results["y"].tolist() == [2.0 * i for i in range(150)]


@pytest.mark.parametrize("dag_id", ["mlserver_deploy_in_worker", "mlserver_deploy_deferrable"])
def test_worker_killed_while_the_start_is_answered_adopts_its_execution(
    deployment: Deployment, held_ml: LocalMLServer, tmp_path: Path, dag_id: str
) -> None:
    """The server started the chunk's execution and holds the answer: the task dies without the id.

    The first try stored its intent (chunk, record count, the executions before) before sending the start;
    the retry finds it, reconciles against the server and adopts the one new execution: one execution only.
    """
    service = f"held_{dag_id.rsplit('_', 1)[-1]}"
    api, conf = slow_batch(held_ml, tmp_path, service, 20)
    run_id = deployment.trigger(dag_id, {**conf, "conn": "mlserver_held"})
    execution_id = _wait_for_execution(api, service)  # the server acted; its answer is held for HOLD s
    ti = deployment.wait_task(dag_id, run_id, {"running"})
    stored = deployment.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/score/state-store")
    (intent,) = [e["value"]["intent"] for e in stored["task_state_store"] if e["key"] == "mlserver_batch"]
    assert (intent["part"], intent["records"], execution_id in intent["before"]) == (0, 20, False)
    _kill_task_process(ti)  # inside the window: the execution exists, its id was never stored
    done = deployment.wait_task(dag_id, run_id, {"success", "failed"}, timeout=180)
    assert done["state"] == "success", deployment.logs()
    assert done["try_number"] == 2
    assert api.get(f"/api/{service}/v1/batch").json() == [execution_id]  # adopted, never started twice
    log = deployment.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/score/logs/2")
    assert f"Adopted batch execution {execution_id} for the only chunk: an earlier try started it" in str(log)
    results = pd.read_parquet(tmp_path / "out.parquet")
    assert results["y"].tolist() == [2.0 * i for i in range(20)]


def test_triggerer_restart_keeps_waiting(deployment: Deployment, ml: LocalMLServer, tmp_path: Path) -> None:
    api, conf = slow_batch(ml, tmp_path, "restart_svc", 200)  # about 20 s of work: outlasts the restart
    run_id = deployment.trigger("mlserver_deploy_deferrable", conf)
    deployment.wait_task("mlserver_deploy_deferrable", run_id, {"deferred"})
    execution_id = _wait_for_execution(api, "restart_svc")
    try:
        deployment.stop("triggerer")  # the trigger is dropped with its triggerer ...
        assert api.status("restart_svc", "v1", execution_id)["state"] == "Running"
    finally:
        deployment.start("triggerer")  # ... and recreated from its serialized kwargs by the new one
    done = deployment.wait_task("mlserver_deploy_deferrable", run_id, {"success", "failed"})
    assert done["state"] == "success", deployment.logs()
    assert api.get("/api/restart_svc/v1/batch").json() == [execution_id]
    status = api.status("restart_svc", "v1", execution_id)
    assert status["state"] == "Complete"
    assert status["cancelRequestCount"] == 0
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 200


def test_user_kill_cancels_the_execution_once(
    deployment: Deployment, ml: LocalMLServer, tmp_path: Path
) -> None:
    api, conf = slow_batch(ml, tmp_path, "kill_svc", 400)
    run_id = deployment.trigger("mlserver_deploy_deferrable", conf)
    deployment.wait_task("mlserver_deploy_deferrable", run_id, {"deferred"})
    execution_id = _wait_for_execution(api, "kill_svc")
    # on_kill runs in the triggerer, so the trigger must be running there before the user acts
    deadline = time.monotonic() + 60
    while (deployment.task("mlserver_deploy_deferrable", run_id).get("trigger") or {}).get(
        "triggerer_id"
    ) is None:
        assert time.monotonic() < deadline, "no triggerer picked the trigger up"
        time.sleep(0.5)
    # ... and running: its first round of polls has logged where the execution stands
    wait_for(
        "the trigger's first progress line",
        lambda: re.search(
            rf"Batch progress|Batch execution {execution_id} is Pending",
            deployment.task_log("mlserver_deploy_deferrable", run_id),
        ),
        timeout=60,
    )
    deployment.request(
        "PATCH",
        f"/dags/mlserver_deploy_deferrable/dagRuns/{run_id}/taskInstances/score",
        json={"new_state": "failed"},
    )
    deadline = time.monotonic() + 60
    while api.status("kill_svc", "v1", execution_id)["state"] != "Canceled":
        assert time.monotonic() < deadline, f"the execution was not canceled\n{deployment.logs()}"
        time.sleep(0.5)
    # on_kill has ended (it logs after its cancel answered): the trigger that ran it cancels nothing more
    wait_for(
        "the trigger's on_kill to log its cancel",
        lambda: (
            f"Canceled batch execution {execution_id} on kill"
            in deployment.task_log("mlserver_deploy_deferrable", run_id)
        ),
        timeout=60,
    )
    status = api.status("kill_svc", "v1", execution_id)
    assert status["cancelRequestCount"] == 1
    assert status["completedItemCount"] < 400
    assert deployment.task("mlserver_deploy_deferrable", run_id)["state"] == "failed"


# --- The event-driven example: an asset watched by MLServerBatchExecutionsTrigger (deploy_dags/collect_finished.py)

WATCHED = "mlserver_deploy_collect_finished"
WATCH_SERVICE = "import time\ntime.sleep(0.1)\ny = x * 2\nopen('out.txt', 'w').write(str(y))\n"


def _watched_store(deployment: Deployment) -> dict[str, Any] | None:
    """What the watcher stored in its asset's state store; None before its first round."""
    assets = deployment.request(
        "GET", "/assets", params={"name_pattern": "mlserver_deploy_watch_finished_batches"}
    )
    if not assets["assets"]:
        return None
    store = deployment.request("GET", f"/assets/{assets['assets'][0]['id']}/state-store")
    values = [
        e["value"] for e in store["asset_state_store"] if e["key"].startswith("mlserver_batch_executions/")
    ]
    return values[0] if values else None


def _watched_runs(deployment: Deployment, at_least: int = 0) -> dict[str, list[str]] | None:
    """Each run of the asset-scheduled DAG, by run id: the execution ids in its asset events' payloads; None
    until there are ``at_least`` runs and each has started (Airflow 3.3 answers a run's upstream asset events
    with a 500 while one of their runs has no start date)."""
    runs = deployment.request("GET", f"/dags/{WATCHED}/dagRuns", params={"limit": 100})["dag_runs"]
    if len(runs) < at_least or any(run["start_date"] is None for run in runs):
        return None
    return {
        run["dag_run_id"]: [
            e["extra"]["payload"]["execution_id"]
            for e in deployment.request(
                "GET", f"/dags/{WATCHED}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents"
            )["asset_events"]
        ]
        for run in runs
    }


def test_a_batch_started_outside_airflow_runs_the_event_driven_dag_once(
    deployment: Deployment, ml: LocalMLServer
) -> None:
    """Raw HTTP starts a batch; the watcher's event runs the DAG once with its id, also after a triggerer restart,
    and an execution that finished while the triggerer was down runs it once when it is back."""
    api = Api(ml)
    api.publish("deploy_watch", "v1", WATCH_SERVICE, {"x": "numeric"}, {"y": "numeric"}, files=["out.txt"])
    deployment.wait_for_dags([WATCHED])
    wait_for("the watcher's first round", lambda: _watched_store(deployment), timeout=180, interval=1)
    execution_id = api.start_batch("deploy_watch", "v1", [{"x": float(i)} for i in range(5)], 2)
    (run_id,) = wait_for("the asset-triggered run", lambda: _watched_runs(deployment, 1), timeout=120)
    assert deployment.wait_run(WATCHED, run_id)["state"] == "success", deployment.logs()
    assert _watched_runs(deployment) == {run_id: [execution_id]}
    manifest = deployment.home / "finished" / execution_id / "manifest.json"
    assert manifest.is_file() and len(list(manifest.parent.glob("*/out.txt"))) == 5

    deployment.stop("triggerer")  # the trigger is dropped; a new triggerer recreates it from its kwargs
    try:
        meanwhile = api.start_batch("deploy_watch", "v1", [{"x": 1.0}], 1)
        api.wait("deploy_watch", "v1", meanwhile)  # finishes while no triggerer runs the watcher
    finally:
        deployment.start("triggerer")
    runs = wait_for(
        "the run of the execution finished meanwhile", lambda: _watched_runs(deployment, 2), timeout=120
    )
    assert sorted(runs.values()) == sorted([[execution_id], [meanwhile]])
    (second,) = [r for r, ids in runs.items() if ids == [meanwhile]]
    assert deployment.wait_run(WATCHED, second)["state"] == "success", deployment.logs()
    time.sleep(5)  # five more rounds of the restarted watcher: no run of either execution again
    assert _watched_runs(deployment) == runs
    assert _watched_store(deployment) == {"form": 1, "done": sorted([execution_id, meanwhile])}
