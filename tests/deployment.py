"""What the real Airflow deployments of the tests share: their processes, and a REST client for them.

``tests/test_deployment.py`` (SQLite, LocalExecutor) and ``tests/test_deployment_celery.py`` (PostgreSQL,
Redis, two Celery workers) each start one :class:`Deployment` per module and act on it from outside, through
the REST API and real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import requests

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, wait_for
from tests.ui_fixtures import free_port

__all__ = [
    "AIRFLOW",
    "COMPONENTS",
    "SLOW",
    "Deployment",
    "free_port",
    "local_executor_env",
    "slow_batch",
    "wait_for",
]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: The processes of a LocalExecutor deployment, as ``airflow standalone`` starts them.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The crash tests' service: 0.2 s a record, so that a batch is still running when a process is killed.
SLOW = "import time\ntime.sleep(0.2)\ny = x * 2\n"


def slow_batch(ml: LocalMLServer, tmp_path: Path, service: str, rows: int) -> tuple[Api, dict[str, Any]]:
    """Publish :data:`SLOW` as ``service`` v1 and write ``rows`` records to a CSV: the API, and the run's conf."""
    api = Api(ml)
    api.publish(service, "v1", SLOW, {"x": "numeric"}, {"y": "numeric"})
    pd.DataFrame({"x": [float(i) for i in range(rows)]}).to_csv(tmp_path / "in.csv", index=False)
    conf = {
        "service": service,
        "records": f"file://{tmp_path}/in.csv",
        "output": str(tmp_path / "out.parquet"),
    }
    return api, conf


def local_executor_env(home: Path, port: int, dags_folder: Path, **extra: str) -> dict[str, str]:
    """The environment of a deployment as ``tests/test_deployment.py`` runs one: SQLite in ``home``, the
    LocalExecutor, the API server on ``port`` with every user an admin (no login needed), ``dags_folder``;
    ``extra`` adds or overrides variables (connections, ``AIRFLOW__...`` settings)."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "deployment-test-secret-0123456789abcdef",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        **extra,
    }


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (the task processes of a worker run in process groups of their own)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Deployment:
    """The Airflow processes of one test module, and a REST client for them."""

    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home = home
        self.env = env
        self.url = f"http://127.0.0.1:{port}/api/v2"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, component: str, args: Sequence[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        """Start ``airflow <args>`` (default: ``airflow <component>``) in a session of its own, logged to
        ``<component>.log``; ``env`` is added to the deployment's environment."""
        log = open(self.home / f"{component}.log", "ab")  # noqa: SIM115 - owned by the child process
        self.procs[component] = subprocess.Popen(
            [AIRFLOW, *(args or [component])],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, component: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Signal a component's process group, then SIGKILL whatever is left of its process tree."""
        proc = self.procs.pop(component)
        tree = _tree(proc.pid)
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait(10)

    def crash(self, component: str) -> None:
        """SIGKILL a component's whole process tree at once, as if its machine died.

        The tree is frozen (SIGSTOP) first, until no new process appears in it, so nothing forks away.
        """
        proc = self.procs.pop(component)
        frozen: dict[int, psutil.Process] = {}
        while new := [p for p in _tree(proc.pid) if p.pid not in frozen]:
            for member in new:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.suspend()
                frozen[member.pid] = member
        for member in frozen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(list(frozen.values()), timeout=10)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))

    def task_log(self, dag_id: str, run_id: str, try_number: int = 1, task_id: str = "score") -> str:
        """A task try's log files as written on this machine: the worker's and the triggerer's (its trigger's lines).

        Read from the files, not through the API server, so that a deferred task's trigger lines are seen as soon
        as the triggerer writes them.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        files = sorted(folder.glob(f"attempt={try_number}.log*"))
        return "".join(p.read_text(errors="replace") for p in files)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = requests.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        run_id: str = run["dag_run_id"]
        return run_id

    def task(self, dag_id: str, run_id: str, task_id: str = "score") -> dict[str, Any]:
        ti: dict[str, Any] = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        return ti

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> None:
        """Wait until the API server lists every one of ``dag_ids`` (the DAG processor has parsed them)."""
        wanted = set(dag_ids)

        def listed() -> bool:
            try:
                answer = requests.get(f"{self.url}/dags", params={"limit": 1000}, timeout=5).json()
            except (requests.ConnectionError, ValueError):
                return False
            return {d["dag_id"] for d in answer.get("dags", [])} >= wanted

        try:
            wait_for(f"the DAGs {sorted(wanted)} in the API", listed, timeout=timeout, interval=1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (DAGs are paused when first seen, unless they say otherwise)."""
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """A DAG run as the REST API shows it (``state``, ``logical_date``, ``run_after``, ...)."""
        run: dict[str, Any] = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return run

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until a DAG run has ended (``success`` or ``failed``); answer it as :meth:`run` does."""

        def ended() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return wait_for(f"run {run_id} of {dag_id} to end", ended, timeout=timeout)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run (mapped ones one per map index)."""
        answer = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        tis: list[dict[str, Any]] = answer["task_instances"]
        return tis

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """An XCom value of a task instance, as the task pushed it (JSON-decoded)."""
        entry = self.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index},
        )
        value = entry["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value

    def wait_task(
        self, dag_id: str, run_id: str, states: set[str], timeout: float = 120, task_id: str = "score"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ti = self.task(dag_id, run_id, task_id)
            if ti["state"] in states:
                return ti
            time.sleep(0.5)
        raise AssertionError(f"task of {run_id} never reached {states} (now {ti['state']})\n{self.logs()}")
