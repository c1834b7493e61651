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
