"""A deployment like users run: PostgreSQL, Redis and two Celery workers, next to a local ML Server.

The module's fixture starts PostgreSQL (the metadata database and Celery's result backend) and Redis (the
Celery broker), Debian's servers on free loopback ports in temporary folders, then Airflow's API server,
scheduler, DAG processor and triggerer and two Celery workers, ``w1`` and ``w2`` (each reports its own host
name, as on two machines). The DAGs folder holds a copy of ``dags_examples`` (as the README tells users to
do) and ``tests/celery_dags``. The tests act from outside, through the REST API, the CLI and real signals.

The fault tests restart or kill one component at a time (PostgreSQL, Redis, the scheduler, the triggerer, the
API server, the ML Server) while a deferred chunked batch has chunks in flight, one run per fault on the same
deployment, and check that every record was scored once into the run's own output. A component that exits
because of another's fault is started again, as a service manager would, and the figures say so.

The figures measured along the way (start-up, run and chunk durations, which worker ran what, the seconds from
each fault to recovery) are printed and written to ``.artifacts/deployment-celery.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
import requests

from airflow_mlserver.server.process import LocalMLServer
from tests.celery_dags.celery_dags import CHUNK_SIZE, FAULTS_DAG
from tests.deployment import AIRFLOW, COMPONENTS, Deployment, free_port, slow_batch, wait_for
from tests.deployment_host import HOST_ENV
from tests.helpers import Api

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "dags_examples"
FIGURES = REPO / ".artifacts" / "deployment-celery.json"
LARGE, CHUNKS = "mlserver_large_scoring", "mlserver_celery_chunks"
WORKERS = ("w1", "w2")
INSTALL = "run 'make test' (it installs them) or 'apt-get install -y postgresql redis-server'"


def _postgres_bin() -> Path:
    """The newest of Debian's PostgreSQL servers (``/usr/lib/postgresql/<major>/bin``)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        pytest.fail(f"The Celery deployment test needs Debian's PostgreSQL server: {INSTALL}.")
    return found[-1].parent


def _stop_server(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Ask a server to stop (``sig``), then SIGKILL its process group: nothing is left running."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


class Server:
    """A server process of the deployment (PostgreSQL, Redis) that the fault tests restart on its own data and port.

    :param name: What the messages call it.
    :param argv: Its command line.
    :param root: Its folder (its working directory and ``<log>``).
    :param log: The log file's name in ``root``.
    :param probe: Answers whether it serves (called until it does).
    :param stop_signal: The signal of its own fast shutdown (PostgreSQL: SIGINT, Redis: SIGTERM).
    :param run_as: ``subprocess.Popen`` arguments to run it as another user.
    :param url: How clients reach it.
    """

    def __init__(
        self,
        name: str,
        argv: list[str | Path],
        root: Path,
        log: str,
        probe: Callable[[], bool],
        stop_signal: int,
        run_as: dict[str, Any],
        url: str,
    ) -> None:
        self.name, self.argv, self.root, self.log = name, argv, root, root / log
        self.probe, self.stop_signal, self.run_as, self.url = probe, stop_signal, run_as, url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self.run_as,
            )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            return self.probe()

        wait_for(f"{self.name} to serve", ready, timeout=60, interval=0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_server(self.proc, self.stop_signal)
            self.proc = None

    def restart(self) -> None:
        """Stop it as its own service manager would (its fast shutdown: clients are disconnected), start it again."""
        self.stop()
        self.start()


@contextlib.contextmanager
def postgres() -> Iterator[Server]:
    """A PostgreSQL server of its own (trust auth, no fsync) with a database ``airflow``; its ``url`` is
    ``user@host:port/database``.

    PostgreSQL refuses to run as root: as root, its folder belongs to, and it runs as, the ``postgres`` user.
    The folder is a fresh one under the system's temporary folder (pytest's are private to root).
    """
    import psycopg

    bindir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="airflow-mlserver-pg-"))
    run_as: dict[str, Any] = {}
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        run_as = {"user": "postgres", "group": "postgres", "extra_groups": []}
    data, port = root / "data", free_port()

    def accepts() -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="airflow", dbname="postgres").close()
        except psycopg.OperationalError:
            return False
        return True

    server = Server(
        "PostgreSQL",
        [bindir / "postgres", "-D", data, "-p", str(port), "-k", root,
         "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off",
         "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        root, "postgres.log", accepts, signal.SIGINT, run_as, f"airflow@127.0.0.1:{port}/airflow",
    )  # fmt: skip
    try:
        subprocess.run(
            [bindir / "initdb", "-D", data, "-U", "airflow", "--auth=trust", "--no-locale", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            cwd=root, check=True, capture_output=True, timeout=180, **run_as,
        )  # fmt: skip
        server.start()
        with psycopg.connect(
            host="127.0.0.1", port=port, user="airflow", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute("CREATE DATABASE airflow")
        yield server
    finally:
        server.stop()  # SIGINT, PostgreSQL's "fast shutdown": clients are disconnected
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def redis() -> Iterator[Server]:
    """A Redis server of its own on loopback, nothing persisted; its ``url`` is database 0's."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail(f"The Celery deployment test needs Debian's Redis server: {INSTALL}.")
    root = Path(tempfile.mkdtemp(prefix="airflow-mlserver-redis-"))
    port = free_port()

    def pong() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    server = Server(
        "Redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root)],
        root, "redis.log", pong, signal.SIGTERM, {}, f"redis://127.0.0.1:{port}/0",
    )  # fmt: skip
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Celery:
    """The deployment, its ML Server, where the examples write, and the figures measured on it."""

    deploy: Deployment
    ml: LocalMLServer
    storage: Path
    database: Server
    broker: Server
    figures: dict[str, Any] = field(default_factory=dict)

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """Run an ``airflow`` CLI command against the deployment; answer its output."""
        done = subprocess.run(
            [AIRFLOW, *args], env=self.deploy.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout

    def unpause(self, dag_id: str) -> None:
        self.deploy.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.deploy.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id)}")
        return run

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """Wait until a DAG run has finished; fail with the deployment's logs unless it succeeded."""

        def finished() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        run = wait_for(f"run {run_id} to finish", finished, timeout)
        assert run["state"] == "success", f"{run_id} {run['state']}\n{self.deploy.logs()}"
        return run

    def mapped(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/listMapped"
        tis: list[dict[str, Any]] = self.deploy.request("GET", path)["task_instances"]
        return sorted(tis, key=lambda ti: ti["map_index"])

    def executions(self, service: str, version: str) -> list[str]:
        """The ids of the service's batch executions on the server (none when it is not published)."""
        answer = Api(self.ml).get(f"/api/{service}/{version}/batch")
        ids: list[str] = answer.json() if answer.status_code == 200 else []
        return ids

    def all_executions(self) -> dict[str, dict[str, Any]]:
        """Every batch execution on the server, of every service: its status, by id."""
        api = Api(self.ml)
        found = {}
        for service in api.get("/services").json():
            name, version = service["name"], service["version"]
            for execution_id in self.executions(name, version):
                found[execution_id] = {
                    "service": f"{name}/{version}",
                    **api.status(name, version, execution_id),
                }
        return found

    def summaries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """The return values (XCom) of a mapped batch task's instances, in map index order."""
        values = []
        for ti in self.mapped(dag_id, run_id, task_id):
            path = f"/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
            entry = self.deploy.request(
                "GET", path, params={"map_index": ti["map_index"], "deserialize": True}
            )
            value = entry["value"]
            values.append(json.loads(value) if isinstance(value, str) else value)
        return values


def _seconds(start: str | None, end: str | None) -> float:
    assert start and end, (start, end)
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under a folder: its SHA-256 and modification time (ns), by relative path."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def celery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    """The whole deployment for the module; everything it started is stopped at the end, figures written."""
    began = time.monotonic()
    home = tmp_path_factory.mktemp("airflow-celery")
    storage = home / "storage"
    dags = home / "dags"
    shutil.copytree(EXAMPLES, dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "tests" / "celery_dags" / "celery_dags.py", dags)
    with (
        postgres() as database,
        redis() as broker,
        LocalMLServer(tmp_path_factory.mktemp("celery-mlserver"), workers=2) as ml,
    ):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg://{database.url}",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg://{database.url}",
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "30",  # sending a task on a busy 2-core machine
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.deployment_host.hostname",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "celery-deployment-test-secret-0123456789",
            # a worker that died is noticed within about 30 s
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "25",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # a SIGKILLed triggerer's triggers go to the next one within about 20 s (its heartbeat is every 5 s)
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
            # runs are made by the tests only (no run of the example's latest day at its full size)
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW_CONN_MLSERVER_DEFAULT": f"mlserver://admin:{quote(ml.password, safe='')}@127.0.0.1:{ml.port}",
            "MLSERVER_EXAMPLES_STORAGE": storage.as_uri(),
        }
        env.pop(HOST_ENV, None)
        celery = Celery(Deployment(home, env, port), ml, storage, database, broker)
        started = time.monotonic()
        celery.airflow("db", "migrate")
        celery.figures["db_migrate_s"] = round(time.monotonic() - started, 1)
        deploy = celery.deploy
        try:
            for component in COMPONENTS:
                deploy.start(component)
            offsets = {worker: _start_worker(deploy, worker) for worker in WORKERS}
            wait_for(
                f"the DAGs {LARGE}, {CHUNKS} and {FAULTS_DAG} in the REST API",
                lambda: _listed(deploy) >= {LARGE, CHUNKS, FAULTS_DAG},
                timeout=240,
                interval=1,
            )
            for worker, offset in offsets.items():
                _wait_worker(deploy, worker, offset)
            celery.figures["start_s"] = round(time.monotonic() - began, 1)
            yield celery
        finally:
            for component in list(deploy.procs):
                deploy.stop(component, signal.SIGKILL)
            celery.figures["module_s"] = round(time.monotonic() - began, 1)
            FIGURES.parent.mkdir(parents=True, exist_ok=True)
            FIGURES.write_text(json.dumps(celery.figures, indent=2) + "\n")
            print(f"\nCelery deployment figures ({FIGURES}):\n{json.dumps(celery.figures, indent=2)}")


def _start_worker(deploy: Deployment, name: str) -> int:
    """Start ``airflow celery worker`` named ``name`` (its Celery and its tasks' host name); answer where
    this start's lines begin in its log."""
    args = ["celery", "worker", "--concurrency", "2", "--celery-hostname", f"{name}@%h", "--skip-serve-logs",
            "--pid", str(deploy.home / f"worker-{name}.pid")]  # fmt: skip
    log = deploy.home / f"worker-{name}.log"
    offset = log.stat().st_size if log.exists() else 0
    deploy.start(f"worker-{name}", args, env={HOST_ENV: name})
    return offset


def _wait_worker(deploy: Deployment, name: str, offset: int = 0) -> None:
    """Wait for Celery's ``<name>@<host> ready.`` line in the worker's log, after ``offset``."""
    log = deploy.home / f"worker-{name}.log"

    def ready() -> bool:
        proc = deploy.procs[f"worker-{name}"]
        assert proc.poll() is None, f"worker {name} exited\n{deploy.logs()}"
        with open(log, "rb") as handle:
            handle.seek(offset)
            return b" ready." in handle.read()

    wait_for(f"Celery worker {name} to be ready", ready, timeout=180, interval=0.5)


def _workloads_run(deploy: Deployment, run_id: str, task_id: str) -> dict[str, set[int]]:
    """The map indexes of ``task_id`` in ``run_id`` that each Celery worker ran, from its log.

    A deferrable task runs twice (its start, then its resume), maybe on two workers; the task instance keeps
    only the last one's host name, so each worker's own "Executing workload" lines tell where every run was.
    """
    ran: dict[str, set[int]] = {}
    for worker in WORKERS:
        log = (deploy.home / f"worker-{worker}.log").read_text(errors="replace")
        for line in log.splitlines():
            if "Executing workload" in line and f"'{run_id}'" in line and f"task_id='{task_id}'" in line:
                found = re.search(r"map_index=(-?\d+)", line)
                ran.setdefault(worker, set()).add(int(found.group(1)) if found else -1)
    return ran


def _listed(deploy: Deployment) -> set[str]:
    try:
        dags = requests.get(f"{deploy.url}/dags", timeout=10).json()
    except (requests.ConnectionError, ValueError):
        return set()
    return {d["dag_id"] for d in dags.get("dags", [])}


def test_large_example_runs_its_mapped_chunks_on_both_workers(celery: Celery) -> None:
    """The large example, 2,000 rows in 4 chunks: each chunk is one execution, and the chunks ran on w1 and w2."""
    rows, chunk_rows = 2000, 500
    before = celery.all_executions()
    celery.unpause(LARGE)
    run = celery.deploy.request(
        "POST",
        f"/dags/{LARGE}/dagRuns",
        json={"logical_date": "2026-02-01T00:00:00+00:00", "conf": {"rows": rows, "chunk_rows": chunk_rows}},
    )
    run = celery.wait_run(LARGE, run["dag_run_id"])
    chunks = celery.mapped(LARGE, run["dag_run_id"], "score_chunk")
    assert [ti["map_index"] for ti in chunks] == list(range(rows // chunk_rows))
    assert {ti["state"] for ti in chunks} == {"success"}
    hosts = {ti["map_index"]: ti["hostname"] for ti in chunks}  # where each one's last run (its resume) was
    ran = _workloads_run(celery.deploy, run["dag_run_id"], "score_chunk")
    assert set(ran) == set(WORKERS), ran  # mapped chunks (a start or a resume) ran on both workers
    assert set().union(*ran.values()) == set(range(len(chunks))), ran

    # one execution per chunk, and nothing else started on the server
    summaries = celery.summaries(LARGE, run["dag_run_id"], "score_chunk")
    assert [len(s["execution_ids"]) for s in summaries] == [1] * len(chunks)
    new = {k: v for k, v in celery.all_executions().items() if k not in before}
    assert set(new) == {s["execution_ids"][0] for s in summaries}
    assert {(v["state"], v["totalItemCount"], v["completedItemCount"]) for v in new.values()} == {
        ("Complete", chunk_rows, chunk_rows)
    }
    merged = pd.read_parquet(celery.storage / "large" / "2026-02-01" / "scores.parquet")
    assert merged["car_id"].tolist() == list(range(rows))
    assert merged["success"].all() and merged["answer"].between(0, 1).all()

    celery.figures["large_example"] = {
        "rows": rows,
        "chunks": len(chunks),
        "run_s": _seconds(run["start_date"], run["end_date"]),
        "chunk_s": {ti["map_index"]: ti["duration"] and round(ti["duration"], 1) for ti in chunks},
        "host": hosts,
    }


def test_worker_killed_mid_batch_the_retry_on_the_other_worker_reattaches(
    celery: Celery, tmp_path: Path
) -> None:
    """SIGKILL the Celery worker (its whole process tree) that scores a chunked batch in the worker.

    The task instance is noticed dead by its missing heartbeats; its retry can only run on the other worker,
    finds the executions the first try stored, reattaches to them and starts only the chunks never started:
    one execution per chunk on the server, and every record in the results, in order.
    """
    rows, service = 150, "celery_crash"
    chunks = -(-rows // CHUNK_SIZE)
    api, conf = slow_batch(celery.ml, tmp_path, service, rows)
    deploy = celery.deploy
    celery.unpause(CHUNKS)
    run_id = deploy.trigger(CHUNKS, conf)
    ti_path = f"/dags/{CHUNKS}/dagRuns/{quote(run_id)}/taskInstances/score"

    def running_chunk() -> tuple[dict[str, Any], str] | None:
        """The task instance, once it runs on a worker with a stored execution that still runs."""
        ti = deploy.task(CHUNKS, run_id)
        if ti["state"] != "running" or ti["hostname"] not in WORKERS:
            return None
        store = deploy.request("GET", f"{ti_path}/state-store")["task_state_store"]
        running = [e for e in _stored_executions(store) if not _finished(api, service, e)]
        return (ti, running[0]) if running else None

    ti, execution_id = wait_for("a stored execution of the running task", running_chunk, timeout=180)
    killed, other = ti["hostname"], next(w for w in WORKERS if w != ti["hostname"])
    at_kill = celery.executions(service, "v1")
    deploy.crash(f"worker-{killed}")
    killed_at = time.monotonic()
    try:
        done = deploy.wait_task(CHUNKS, run_id, {"success", "failed"}, timeout=300)
        retried_s = round(time.monotonic() - killed_at, 1)
    finally:
        _wait_worker(deploy, killed, _start_worker(deploy, killed))  # back for the next tests
    assert done["state"] == "success", deploy.logs()
    tries = deploy.request("GET", f"{ti_path}/tries")["task_instances"]
    assert [(t["try_number"], t["hostname"]) for t in tries] == [(1, killed), (2, other)], tries
    log = str(deploy.request("GET", f"{ti_path}/logs/2"))
    assert "Found the executions of an earlier try" in log and execution_id in log

    executions = celery.executions(service, "v1")
    statuses = [api.status(service, "v1", e) for e in executions]
    assert sorted((s["state"], s["totalItemCount"]) for s in statuses) == sorted(
        ("Complete", min(CHUNK_SIZE, rows - start)) for start in range(0, rows, CHUNK_SIZE)
    )  # one execution per chunk: the killed try's were reattached, none started twice
    assert len(executions) == chunks and set(at_kill) <= set(executions)
    results = pd.read_parquet(tmp_path / "out.parquet")
    assert results["y"].tolist() == [2.0 * i for i in range(rows)]
    assert results["success"].all()

    celery.figures["worker_kill"] = {
        "rows": rows,
        "chunks": chunks,
        "killed": killed,
        "retried_on": other,
        "kill_to_success_s": retried_s,
        "try_2_s": done["duration"] and round(done["duration"], 1),
        "executions_at_kill": len(at_kill),
    }


def _stored_executions(store: list[dict[str, Any]]) -> list[str]:
    """The execution ids in a task instance's stored batch state (the task-state store's entries), in order."""
    return [
        part["execution_id"]
        for entry in store
        if entry["key"] == "mlserver_batch"
        for round_ in entry["value"]["rounds"]
        for part in round_["parts"]
        if part["execution_id"]
    ]


def _finished(api: Api, service: str, execution_id: str) -> bool:
    return str(api.status(service, "v1", execution_id)["state"]) in ("Complete", "Failed", "Canceled")


def test_backfill_scores_each_date_once_and_again_nothing(celery: Celery) -> None:
    """``airflow backfill create`` over three dates scores each date once, into its own output; the same
    backfill again creates no run, starts no execution and leaves every output file as it was."""
    dates, rows, chunk_rows = ["2026-03-01", "2026-03-02", "2026-03-03"], 1000, 500
    backfill = ["backfill", "create", "--dag-id", LARGE, "--from-date", dates[0], "--to-date", dates[-1],
                "--dag-run-conf", json.dumps({"rows": rows, "chunk_rows": chunk_rows}),
                "--max-active-runs", "3"]  # fmt: skip
    celery.unpause(LARGE)
    before = celery.all_executions()
    started = time.monotonic()
    celery.airflow(*backfill)
    runs = wait_for("the backfill to complete", lambda: _backfill_done(celery, 1), timeout=420, interval=1)
    took = round(time.monotonic() - started, 1)
    assert sorted((r["logical_date"][:10], r["state"]) for r in runs) == [(d, "success") for d in dates], (
        celery.deploy.logs()
    )

    # each date scored once: one execution per chunk of each date, and nothing else
    started_ids = [
        e
        for r in runs
        for s in celery.summaries(LARGE, r["dag_run_id"], "score_chunk")
        for e in s["execution_ids"]
    ]
    new = {k: v for k, v in celery.all_executions().items() if k not in before}
    assert sorted(started_ids) == sorted(new) and len(new) == len(dates) * rows // chunk_rows
    assert {(v["state"], v["completedItemCount"]) for v in new.values()} == {("Complete", chunk_rows)}
    frames = {}
    for ds in dates:  # each date's own output holds each date's own input, scored once
        folder = celery.storage / "large" / ds
        inputs = pd.concat(pd.read_parquet(p) for p in sorted((folder / "input").glob("part-*.parquet")))
        scores = pd.read_parquet(folder / "scores.parquet")
        assert scores["car_id"].tolist() == list(range(rows)) and scores["success"].all()
        assert scores[["hp", "wt"]].to_numpy().tolist() == inputs[["hp", "wt"]].to_numpy().tolist()
        frames[ds] = scores
    assert not frames[dates[0]]["answer"].equals(frames[dates[1]]["answer"])  # dates are not mixed up
    outputs = {ds: _digest(celery.storage / "large" / ds) for ds in dates}

    celery.airflow(*backfill)  # the same backfill again
    again = wait_for("the second backfill to complete", lambda: _backfill_done(celery, 2), timeout=120)
    assert len(again) == 3 and {r["dag_run_id"] for r in again} == {r["dag_run_id"] for r in runs}
    assert {k for k in celery.all_executions() if k not in before} == set(new)  # nothing scored twice
    assert {ds: _digest(celery.storage / "large" / ds) for ds in dates} == outputs  # not even rewritten

    celery.figures["backfill"] = {
        "dates": len(dates),
        "rows_per_date": rows,
        "chunks_per_date": rows // chunk_rows,
        "create_to_complete_s": took,
        "runs_s": {r["logical_date"][:10]: _seconds(r["start_date"], r["end_date"]) for r in runs},
    }


def _backfill_done(celery: Celery, count: int) -> list[dict[str, Any]] | None:
    """The large example's backfill runs, once its ``count`` backfills have all completed."""
    backfills = celery.deploy.request("GET", f"/backfills?dag_id={LARGE}")["backfills"]
    assert len(backfills) == count, backfills
    if any(b["completed_at"] is None for b in backfills):
        return None
    runs: list[dict[str, Any]] = celery.deploy.request("GET", f"/dags/{LARGE}/dagRuns?run_type=backfill")[
        "dag_runs"
    ]
    return runs


# --- Faults an operator meets, each while the deferred chunked batch of ``mlserver_celery_faults`` runs ---

#: The fault tests' batch: 3 chunks of CHUNK_SIZE records, MAX_ACTIVE at once, 0.2 s a record on the 2-worker
#: server (about 6 s a chunk with two at once), so that chunks are in flight when the fault hits.
FAULT_ROWS = 3 * CHUNK_SIZE


def _kill_scheduler(celery: Celery) -> None:
    celery.deploy.crash("scheduler")
    celery.deploy.start("scheduler")


def _kill_triggerer(celery: Celery) -> None:
    celery.deploy.crash("triggerer")
    celery.deploy.start("triggerer")


def _restart_api_server(celery: Celery) -> None:
    celery.deploy.stop("api-server")  # SIGTERM, as its service manager would
    celery.deploy.start("api-server")
    wait_for("the API server to answer", lambda: _answers(celery.deploy), timeout=120, interval=0.2)


#: How long the killed ML Server stays down: several of the trigger's 1 s polls find no server.
MLSERVER_DOWN_S = 5


def _kill_mlserver(celery: Celery) -> None:
    celery.ml.stop(signal.SIGKILL)  # the server and its worker processes, at once, records half-run
    time.sleep(MLSERVER_DOWN_S)
    celery.ml.start()  # the same data folder, the same port


@dataclass(frozen=True)
class Fault:
    """One fault: how it is injected (``inject`` returns once the component was started again; a server, once
    it answers) and the task instance's state it hits (``deferred``: its chunks run while its trigger watches
    them in the triggerer; ``running``: on a Celery worker, between the starts of its chunks)."""

    name: str
    at: str
    inject: Callable[[Celery], None] | None


FAULTS = [
    Fault("none", "deferred", None),  # the baseline: the same batch, the same moment, no fault
    Fault("postgres-restart", "deferred", lambda c: c.database.restart()),
    Fault("redis-restart", "deferred", lambda c: c.broker.restart()),
    Fault("scheduler-sigkill", "deferred", _kill_scheduler),
    Fault("triggerer-sigkill", "deferred", _kill_triggerer),
    Fault("api-server-restart", "running", _restart_api_server),
    Fault("mlserver-sigkill", "deferred", _kill_mlserver),
]


def _answers(deploy: Deployment) -> bool:
    try:
        return requests.get(f"{deploy.url}/version", timeout=5).status_code == 200
    except requests.RequestException:
        return False


class _Watch:
    """Polls a task instance's state and try number in a thread of its own (through the REST API, whatever
    fails meanwhile) and keeps every change, with its time (``time.monotonic()``)."""

    def __init__(self, deploy: Deployment, dag_id: str, run_id: str) -> None:
        self.deploy, self.dag_id, self.run_id = deploy, dag_id, run_id
        self.changes: list[tuple[float, str, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)

    def _poll(self) -> None:
        while not self.done.wait(0.25):
            try:
                ti = self.deploy.task(self.dag_id, self.run_id)
            except (AssertionError, requests.RequestException, ValueError):
                continue  # the API server or its database is down for now
            seen = (str(ti["state"]), int(ti["try_number"]))
            if not self.changes or self.changes[-1][1:] != seen:
                self.changes.append((time.monotonic(), *seen))

    def after(self, moment: float, seen: tuple[str, int]) -> list[tuple[float, str, int]]:
        """The changes from ``seen`` (the state and try number at ``moment``) seen after ``moment``, their
        times in seconds from it."""
        changes = [(t, state, tries) for t, state, tries in self.changes if t > moment]
        while changes and changes[0][1:] == seen:  # the state at the moment, seen by a poll just after it
            changes.pop(0)
        return [(round(t - moment, 1), state, tries) for t, state, tries in changes]


def _supervise(celery: Celery) -> list[str]:
    """Start again every component of the deployment that exited, as its service manager would; answer which."""
    exited = [name for name, proc in celery.deploy.procs.items() if proc.poll() is not None]
    for name in exited:
        worker = name.removeprefix("worker-")
        if worker != name:
            _wait_worker(celery.deploy, worker, _start_worker(celery.deploy, worker))
        else:
            celery.deploy.start(name)
    return exited


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_a_fault_while_chunks_run_scores_every_record_once(
    celery: Celery, tmp_path: Path, fault: Fault
) -> None:
    """Restart or kill one component while a deferred batch has chunks in flight: the run still succeeds (a try
    may fail and be retried), with one execution per chunk on the server, the very ones the summary names, and
    every record scored once, in input order, into the run's own output.

    Recovery is measured from the fault (the first signal sent to the component): to the task instance's first
    change of state or try seen after it (polled every 0.25 s), and to the end of the run. ``none`` is the same
    batch with no fault, measured from the same moment.
    """
    rows, service = FAULT_ROWS, f"fault_{fault.name.replace('-', '_')}"
    api, conf = slow_batch(celery.ml, tmp_path, service, rows)
    deploy = celery.deploy
    celery.unpause(FAULTS_DAG)
    run_id = deploy.trigger(FAULTS_DAG, conf)
    exited: list[str] = []
    with _Watch(deploy, FAULTS_DAG, run_id) as watch:

        def chunk_in_flight() -> tuple[str, int] | None:
            """The task instance's state and try, once in the state the fault is for with an execution the
            server has not finished."""
            ti = deploy.task(FAULTS_DAG, run_id)
            if ti["state"] != fault.at:
                return None
            if fault.at == "deferred" and not (ti.get("trigger") or {}).get("triggerer_id"):
                return None  # not yet watched by the triggerer
            if not any(not _finished(api, service, e) for e in celery.executions(service, "v1")):
                return None
            return (str(ti["state"]), int(ti["try_number"]))

        seen = wait_for(
            f"a chunk in flight while the task is {fault.at}", chunk_in_flight, timeout=180, interval=0.1
        )
        at_fault = sorted(celery.executions(service, "v1"))
        done_at_fault = sum(int(api.status(service, "v1", e)["completedItemCount"]) for e in at_fault)
        fault_at, fault_utc = time.monotonic(), datetime.now(UTC)
        if fault.inject is not None:
            fault.inject(celery)
        back_s = round(time.monotonic() - fault_at, 1)

        def finished() -> dict[str, Any] | None:
            exited.extend(_supervise(celery))
            try:
                run = celery.run(FAULTS_DAG, run_id)
            except (AssertionError, requests.RequestException, ValueError):
                return None
            return run if run["state"] in ("success", "failed") else None

        run = wait_for(f"run {run_id} to finish after the fault", finished, timeout=300, interval=0.5)
        changes = watch.after(fault_at, seen)
    exited.extend(_supervise(celery))
    assert run["state"] == "success", f"{fault.name}: {run_id} {run['state']}\n{deploy.logs()}"

    # one execution per chunk, the ones the summary names: no chunk was started twice
    ti_path = f"/dags/{FAULTS_DAG}/dagRuns/{quote(run_id)}/taskInstances/score"
    summary = deploy.request("GET", f"{ti_path}/xcomEntries/return_value", params={"deserialize": True})[
        "value"
    ]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    chunks = [f"{s}-{min(s + CHUNK_SIZE, rows) - 1}" for s in range(0, rows, CHUNK_SIZE)]
    assert [(e["round"], e["records"]) for e in summary["executions"]] == [(0, c) for c in chunks], summary
    ids = [e["execution_id"] for e in summary["executions"]]
    assert summary["execution_ids"] == ids
    assert sorted(celery.executions(service, "v1")) == sorted(ids) and set(at_fault) <= set(ids)
    statuses = [api.status(service, "v1", e) for e in ids]
    assert [
        (s["state"], s["totalItemCount"], s["completedItemCount"], s["failedItemCount"]) for s in statuses
    ] == [("Complete", CHUNK_SIZE, CHUNK_SIZE, 0)] * len(chunks)
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (rows, rows, 0)

    # every record once, in input order, with its own score, in this run's output and nowhere else
    results = pd.read_parquet(tmp_path / "out.parquet")
    assert results["record"].tolist() == list(range(rows))
    assert results["x"].tolist() == [float(i) for i in range(rows)]
    assert results["y"].tolist() == [2.0 * i for i in range(rows)]
    assert results["success"].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.parquet"]  # no parts left behind
    assert summary["output_uri"].endswith(f"{tmp_path.name}/out.parquet")

    tries = int(deploy.task(FAULTS_DAG, run_id)["try_number"])
    logs = "".join(deploy.task_log(FAULTS_DAG, run_id, n) for n in range(1, tries + 1))
    first = changes[0] if changes else None
    celery.figures.setdefault("faults", {})[fault.name] = {
        "at": fault.at,
        "rows": rows,
        "chunks": len(chunks),
        "executions_at_fault": len(at_fault),
        "records_done_at_fault": done_at_fault,
        "component_back_s": back_s,
        "to_next_state_s": first[0] if first else None,
        "next_state": first[1] if first else None,
        "to_success_s": round((datetime.fromisoformat(run["end_date"]) - fault_utc).total_seconds(), 1),
        "run_s": _seconds(run["start_date"], run["end_date"]),
        "tries": tries,
        "states_after_fault": changes,
        "components_exited": exited,
        "reattached_by_a_retry": "Found the executions of an earlier try" in logs,
    }
