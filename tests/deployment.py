"""What the real Airflow deployments of the tests share: their processes, and a REST client for them.

``tests/test_deployment.py`` (SQLite, LocalExecutor) and ``tests/test_deployment_celery.py`` (PostgreSQL,
Redis, two Celery workers) each start one :class:`Deployment` per module and act on it from outside, through
the REST API and real signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import requests

from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, wait_for
from tests.ui_fixtures import free_port

__all__ = ["AIRFLOW", "SLOW", "Deployment", "free_port", "slow_batch", "wait_for"]

AIRFLOW = str(Path(sys.executable).parent / "airflow")
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
