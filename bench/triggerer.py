"""``deployment.triggerer``: a real ``airflow triggerer`` holding N deferred batch tasks, against Airflow's own
``DateTimeTrigger`` holding as many.

A LocalExecutor deployment (SQLite, API server, scheduler, DAG processor, triggerer; started as
``tests/test_deployment.py`` starts one) next to a 2-worker local ML Server, with the DAGs of
``bench/triggerer_dags/`` (copied into a temporary DAGs folder, which is also on the ``PYTHONPATH`` of every Airflow
process so that the triggerer imports the probe trigger). N is 1,000 (100 with ``--quick``, or ``BENCH_TRIGGERS``).
Two scenarios, one after the other, each on a freshly started triggerer:

* **ours**: ``MLServerBatchOperator`` mapped over N map indices, one record each, ``deferrable=True``,
  ``poll_interval=10``. The service's code waits for a file (``GO``) and then takes ``PACE`` seconds, so the
  server's two workers hold the first two executions and the others stay Pending: every trigger keeps polling;
* **baseline**: ``DateTimeSensorAsync`` mapped over N, deferred from the worker, its target far in the future but
  for a subset whose targets are staggered like ours finish.

Each: the triggerer's idle memory (process tree, before any task deferred); the time until all N are deferred;
after a settle time (20 s, 10 with ``--quick``), over a steady window (60 s, 30), the triggerer tree's CPU (% of
one core), its memory (sum of VmHWM and of VmRSS over the triggerer and its trigger runner) and its event-loop
lag, from a probe trigger that sleeps 0.1 s in a loop in the same triggerer. Then resume latency: ours, the time
from a record's end (its output ``y``) to its task's resume (``execute_complete`` starting, noted by a subclass
in the DAG file) for the first executions to end (60, 20 with ``--quick``), which finish about one every 2 s
after ``GO`` while the rest stay Pending; the baseline, from each subset task's target time to its resume.

``python -m bench --only deployment.triggerer [--quick]``; it runs only when selected.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    Api,
    BenchResult,
    Figure,
    client_peak_mib,
    percentile,
    running_server,
    tree_cpu_seconds,
    tree_memory_mib,
)
from bench.operator import _conn_uri
from tests.deployment import AIRFLOW, COMPONENTS, Deployment, free_port, local_executor_env, wait_for

DAG_SOURCE = Path(__file__).resolve().parent / "triggerer_dags"
OURS, BASELINE = "bench_triggerer_ours", "bench_triggerer_baseline"
SERVICE, VERSION = "bench_hold", "1.0"  # as in bench_triggerer_dags.py
POLL_S = 10.0  # the operator's poll_interval in bench_triggerer_dags.py
#: Seconds a record takes after GO: the two workers finish one execution about every PACE / 2 s.
PACE = 4.0
ENV_SIZE = "BENCH_TRIGGERS"
# Targets of the project for N = 1,000 at 10 s polls.
MEMORY_TARGET_MIB = 100.0
CPU_TARGET_PCT = 15.0
LAG_P99_TARGET_MS = 20.0
LAG_MAX_TARGET_MS = 100.0
RESUME_TARGET_S = POLL_S + 2.0
VERSUS_BASELINE_TARGET = 2.0


@dataclass
class Plan:
    """The sizes and times of one run."""

    n: int
    subset: int
    settle: float
    window: float

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        raw = os.environ.get(ENV_SIZE, "").strip()
        n = int(raw) if raw else (100 if quick else 1_000)
        if n < 4:
            raise ValueError(f"{ENV_SIZE}={raw}: at least 4 tasks")
        subset = min(20 if quick or n < 300 else 60, n // 2)
        return cls(n=n, subset=subset, settle=10.0 if quick else 20.0, window=30.0 if quick else 60.0)


@dataclass
class Measured:
    """What one scenario measured."""

    idle_hwm: float = 0.0
    idle_rss: float = 0.0
    defer_seconds: float = 0.0
    hwm: float = 0.0
    rss: float = 0.0
    processes: int = 0
    cpu_pct: float = float("nan")
    lag: dict[str, float] = field(default_factory=dict)
    lag_samples: int = 0
    latencies: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def growth(self) -> float:
        return self.hwm - self.idle_hwm


def _say(text: str) -> None:
    print(f"   [{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _wait(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """:func:`tests.helpers.wait_for`, a timeout raised as ``TimeoutError`` (some waits carry on after one)."""
    return wait_for(what, probe, timeout, interval, error=TimeoutError)


# -- the deployment -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _deployment(base: Path, plan: Plan, conn_uri: str) -> Iterator[Deployment]:
    """The LocalExecutor deployment of the benchmark; every process is killed on exit, whatever happened."""
    home, dags, out = base / "airflow", base / "dags", base / "out"
    home.mkdir()
    out.mkdir()
    shutil.copytree(DAG_SOURCE, dags, ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    env = local_executor_env(
        home,
        port,
        dags,
        PYTHONPATH=os.pathsep.join(p for p in (str(dags), os.environ.get("PYTHONPATH", "")) if p),
        AIRFLOW_CONN_MLSERVER_DEFAULT=conn_uri,
        MLSERVER_BENCH_TRIGGERS=str(plan.n),
        MLSERVER_BENCH_DIR=str(out),
        AIRFLOW__TRIGGERER__CAPACITY=str(plan.n + 100),
        AIRFLOW__CORE__MAX_MAP_LENGTH=str(max(1024, plan.n + 10)),
        AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=str(plan.n + 10),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        # a loaded 2-core machine must not turn slow task heartbeats into failures
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="300",
        AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD="60",
    )
    migrate = subprocess.run(
        [AIRFLOW, "db", "migrate"], env=env, capture_output=True, timeout=600, check=False
    )
    if migrate.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed: {migrate.stderr.decode(errors='replace')[-2000:]}")
    deploy = Deployment(home, env, port)
    try:
        for component in COMPONENTS:
            deploy.start(component)
        deploy.wait_for_dags([OURS, BASELINE], timeout=300)
        yield deploy
    finally:
        for component in list(deploy.procs):
            with contextlib.suppress(Exception):
                deploy.stop(component, signal.SIGKILL, timeout=10)


def _triggerer_pid(deploy: Deployment) -> int:
    proc = deploy.procs["triggerer"]
    if proc.poll() is not None:
        raise RuntimeError(f"the triggerer exited ({proc.returncode}):\n{deploy.logs()}")
    return proc.pid


def _fresh_triggerer(deploy: Deployment, restart: bool) -> None:
    """(Re)start the triggerer and wait until its trigger runner runs, then a little longer."""
    if restart:
        deploy.stop("triggerer")
        deploy.start("triggerer")
    _wait("the triggerer's trigger runner", lambda: tree_memory_mib(_triggerer_pid(deploy))[2] >= 2, 120)
    time.sleep(10)


def _count(deploy: Deployment, dag_id: str, run_id: str, task_id: str, states: list[str]) -> int:
    answer = deploy.request(
        "GET",
        f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
        params={"task_id": task_id, "state": states, "limit": 1},
    )
    return int(answer["total_entries"])


def _wait_deferred(deploy: Deployment, dag_id: str, run_id: str, n: int) -> float:
    """Seconds until all N mapped tasks and the probe are deferred; fails on a failed task or a stall."""
    t0 = time.monotonic()
    last, last_change, last_say = -1, t0, t0
    while True:
        deferred = _count(deploy, dag_id, run_id, "wait", ["deferred"])
        probe = _count(deploy, dag_id, run_id, "probe", ["deferred"])
        now = time.monotonic()
        if deferred >= n and probe:
            return now - t0
        bad = _count(deploy, dag_id, run_id, "wait", ["failed", "upstream_failed", "success", "skipped"])
        bad += _count(deploy, dag_id, run_id, "probe", ["failed", "success"])
        if bad:
            raise RuntimeError(f"{bad} task(s) of {dag_id} ended before all deferred:\n{deploy.logs()}")
        if deferred != last:
            last, last_change = deferred, now
        if now - last_change > 300:
            raise TimeoutError(
                f"{dag_id}: no task deferred for 300 s ({deferred}/{n} deferred after {now - t0:.0f} s)\n"
                f"{deploy.logs()}"
            )
        if now - last_say >= 30:
            rate = deferred / (now - t0)
            eta = (n - deferred) / rate if rate else float("nan")
            _say(f"{deferred}/{n} deferred after {now - t0:.0f} s (about {eta:.0f} s to go)")
            last_say = now
        _triggerer_pid(deploy)
        time.sleep(2)


# -- one scenario ---------------------------------------------------------------------------------------------
def _steady(deploy: Deployment, out: Path, scenario: str, plan: Plan, measured: Measured) -> None:
    """Settle, then measure the triggerer tree over the window; then stop the probe and read its lag."""
    time.sleep(plan.settle)
    pid = _triggerer_pid(deploy)
    cpu0, w0 = tree_cpu_seconds(pid), time.time()
    time.sleep(plan.window)
    cpu1, w1 = tree_cpu_seconds(pid), time.time()
    measured.hwm, measured.rss, measured.processes = tree_memory_mib(pid)
    used = sum(cpu1[p] - cpu0[p] for p in cpu1 if p in cpu0)
    measured.cpu_pct = used / (w1 - w0) * 100
    if set(cpu0) != set(cpu1):
        measured.notes.append(f"{scenario}: the triggerer's processes changed during the window")
    (out / f"{scenario}-probe-stop").touch()
    samples_file = out / f"{scenario}-probe.jsonl"
    _wait(f"the {scenario} probe's samples", samples_file.exists, 60)
    lags = [lag for t, lag in map(json.loads, samples_file.read_text().splitlines()) if w0 <= t <= w1]
    measured.lag_samples = len(lags)
    measured.lag = {
        "p50": percentile(lags, 50),
        "p99": percentile(lags, 99),
        "max": max(lags, default=math.nan),
    }


def _resumed(out: Path, scenario: str) -> dict[int, float]:
    folder = out / f"{scenario}-resumed"
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        with contextlib.suppress(ValueError):
            found[int(path.name)] = float(path.read_text())
    return found


def _end_run(deploy: Deployment, dag_id: str, run_id: str) -> None:
    """Mark the run failed (its deferred tasks fail, their triggers are dropped) and wait until none is deferred."""
    with contextlib.suppress(Exception):
        deploy.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})
    with contextlib.suppress(TimeoutError):
        _wait(
            f"no deferred task left in {dag_id}",
            lambda: _count(deploy, dag_id, run_id, "wait", ["deferred"]) == 0,
            120,
            2,
        )


def _ours(deploy: Deployment, api: Api, out: Path, go: Path, plan: Plan) -> Measured:
    measured = Measured()
    _fresh_triggerer(deploy, restart=False)
    measured.idle_hwm, measured.idle_rss, _ = tree_memory_mib(_triggerer_pid(deploy))
    run_id = deploy.trigger(OURS, {})
    _say(f"ours: {run_id} triggered, waiting for {plan.n} deferred batch tasks")
    measured.defer_seconds = _wait_deferred(deploy, OURS, run_id, plan.n)
    _say(f"ours: all {plan.n} deferred in {measured.defer_seconds:.0f} s; settle and measure")
    _steady(deploy, out, "ours", plan, measured)
    go.touch()
    _say(f"ours: GO; waiting for {plan.subset} tasks to resume")
    timeout = plan.subset * PACE / 2 + POLL_S + 240
    with contextlib.suppress(TimeoutError):
        _wait(f"{plan.subset} resumed tasks", lambda: len(_resumed(out, "ours")) >= plan.subset, timeout, 2)
    time.sleep(POLL_S + 5)  # the latest of the subset to resume, noted
    ended = _record_ends(api)
    resumed = _resumed(out, "ours")
    first = sorted(ended, key=ended.__getitem__)[: plan.subset]  # the first records to end
    measured.latencies = [resumed[i] - ended[i] for i in first if i in resumed]
    if len(measured.latencies) < plan.subset:
        measured.notes.append(
            f"ours: {len(measured.latencies)} of the first {plan.subset} records' tasks resumed "
            f"({len(first)} records ended)"
        )
    _end_run(deploy, OURS, run_id)
    _cancel_all(api)
    return measured


def _record_ends(api: Api) -> dict[int, float]:
    """Map index (the record's x) -> the record's end time (its output y), over the complete executions."""
    ends: dict[int, float] = {}
    for execution_id in api.request("GET", f"/api/{SERVICE}/{VERSION}/batch").json():
        status = api.status(SERVICE, VERSION, execution_id, partial=False)
        if str(status["state"]).lower() != "complete":
            continue
        full = api.status(SERVICE, VERSION, execution_id, partial=True)
        for item in full.get("batchExecutionResults") or []:
            outputs = item.get("outputParameters") or {}
            if outputs.get("i") is not None and outputs.get("y") is not None:
                ends[int(outputs["i"])] = float(outputs["y"])
    return ends


def _cancel_all(api: Api) -> None:
    with contextlib.suppress(Exception):
        for execution_id in api.request("GET", f"/api/{SERVICE}/{VERSION}/batch").json():
            with contextlib.suppress(Exception):
                api.request("DELETE", f"/api/{SERVICE}/{VERSION}/batch/{execution_id}")


def _baseline(deploy: Deployment, out: Path, plan: Plan, ours_defer: float) -> Measured:
    """DateTimeSensorAsync x N; the subset's targets start after the expected end of the window."""
    measured = Measured()
    _fresh_triggerer(deploy, restart=True)
    measured.idle_hwm, measured.idle_rss, _ = tree_memory_mib(_triggerer_pid(deploy))
    # The targets are set before the run starts: the sensors defer no slower than the batch tasks (no service
    # read, no start), so ours' time, with a margin, bounds theirs; the window ends 30 s before the first target.
    first = time.time() + ours_defer * 1.05 + 60 + plan.settle + plan.window + 30
    targets = {i: first + i * PACE / 2 for i in range(plan.subset)}
    conf = {"targets": {str(i): datetime.fromtimestamp(t, UTC).isoformat() for i, t in targets.items()}}
    run_id = deploy.trigger(BASELINE, conf)
    _say(f"baseline: {run_id} triggered, waiting for {plan.n} deferred sensors")
    measured.defer_seconds = _wait_deferred(deploy, BASELINE, run_id, plan.n)
    _say(f"baseline: all {plan.n} deferred in {measured.defer_seconds:.0f} s; settle and measure")
    room = first - 5 - time.time() - plan.settle
    if room < plan.window:
        measured.notes.append(
            f"baseline: the window was cut to {max(room, 0):.0f} s: the first target came before its end"
        )
    window = min(plan.window, max(room, 5.0))
    _steady(deploy, out, "baseline", Plan(plan.n, plan.subset, plan.settle, window), measured)
    last = max(targets.values())
    _say(f"baseline: waiting for {plan.subset} sensors to resume (last target in {last - time.time():.0f} s)")
    timeout = last - time.time() + 240
    with contextlib.suppress(TimeoutError):
        _wait(
            f"{plan.subset} resumed sensors",
            lambda: len(_resumed(out, "baseline")) >= plan.subset,
            timeout,
            2,
        )
    resumed = _resumed(out, "baseline")
    measured.latencies = [resumed[i] - t for i, t in targets.items() if i in resumed]
    if len(measured.latencies) < plan.subset:
        measured.notes.append(f"baseline: only {len(measured.latencies)} of {plan.subset} sensors resumed")
    _end_run(deploy, BASELINE, run_id)
    return measured


# -- the benchmark ------------------------------------------------------------------------------------------
def _hold_code(go: Path) -> str:
    """The service: wait for ``go`` (a worker held, the other executions Pending), take PACE s, answer the end."""
    return "\n".join(
        [
            "import os, time",
            f"while not os.path.exists({str(go)!r}):",
            "    time.sleep(0.05)",
            f"time.sleep({PACE})",
            "i = x",
            "y = time.time()",
            "",
        ]
    )


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _scenario_figures(label: str, m: Measured, n: int) -> list[Figure]:
    lat = m.latencies
    p50, p99, worst = percentile(lat, 50), percentile(lat, 99), max(lat, default=math.nan)
    figures = [
        Figure(
            f"{label}: all {n:,} deferred after", m.defer_seconds, "s", f"{n / m.defer_seconds:.1f} tasks/s"
        ),
        Figure(f"{label}: triggerer idle VmHWM", m.idle_hwm, "MiB", f"RSS {m.idle_rss:.0f} MiB"),
        Figure(
            f"{label}: triggerer VmHWM", m.hwm, "MiB", f"RSS now {m.rss:.0f} MiB, {m.processes} processes"
        ),
        Figure(f"{label}: memory over idle", m.growth, "MiB", f"RSS +{m.rss - m.idle_rss:.0f} MiB"),
        Figure(f"{label}: triggerer CPU", m.cpu_pct, "% core"),
        Figure(f"{label}: loop lag p50", m.lag.get("p50", math.nan), "ms", f"{m.lag_samples} wake-ups"),
        Figure(f"{label}: loop lag p99", m.lag.get("p99", math.nan), "ms"),
        Figure(f"{label}: loop lag max", m.lag.get("max", math.nan), "ms"),
        Figure(f"{label}: resume latency p50", p50, "s", f"{len(lat)} tasks"),
        Figure(f"{label}: resume latency p99", p99, "s"),
        Figure(f"{label}: resume latency max", worst, "s"),
    ]
    return figures


def _target(name: str, value: float, unit: str, limit: float, label: str = "target") -> Figure:
    """A figure with a target: ``ok`` at or under ``limit``, else ``MISS``."""
    return Figure(name, value, unit, f"{label} <= {limit:.0f}", _verdict(value <= limit))


def _targets(ours: Measured, base: Measured, n: int) -> list[Figure]:
    scale = f"target at N=1,000; N={n:,} here" if n != 1_000 else "target"
    mem_ratio = ours.growth / base.growth if base.growth > 0 else math.nan
    cpu_ratio = ours.cpu_pct / base.cpu_pct if base.cpu_pct > 0 else math.nan
    return [
        _target("ours: memory over idle", ours.growth, "MiB", MEMORY_TARGET_MIB, scale),
        _target("ours: CPU", ours.cpu_pct, "% core", CPU_TARGET_PCT, scale),
        _target("ours: loop lag p99", ours.lag.get("p99", math.nan), "ms", LAG_P99_TARGET_MS),
        _target("ours: loop lag max", ours.lag.get("max", math.nan), "ms", LAG_MAX_TARGET_MS),
        _target("ours: resume latency p99", percentile(ours.latencies, 99), "s", RESUME_TARGET_S),
        _target("memory over idle, ours / baseline", mem_ratio, "x", VERSUS_BASELINE_TARGET),
        _target("CPU, ours / baseline", cpu_ratio, "x", VERSUS_BASELINE_TARGET),
    ]


def estimate_seconds(plan: Plan, per_task_ours: float, per_task_base: float) -> float:
    """A run's expected length: start-up, and per scenario the deferrals, settle, window and resumes."""
    fixed = 90 + 2 * (25 + plan.settle + plan.window + 30)
    resumes = plan.subset * PACE / 2 + POLL_S + 15 + 30
    return fixed + plan.n * (per_task_ours + per_task_base) + 2 * resumes


def bench_triggerer(quick: bool) -> BenchResult:
    """A real triggerer holding N deferred batch tasks vs N DateTimeTriggers: memory, CPU, loop lag, resumes."""
    plan = Plan.for_run(quick)
    started = time.perf_counter()
    result = BenchResult("deployment.triggerer")
    guess = estimate_seconds(plan, 0.8, 0.8)  # seconds a task takes to defer, as seen on 2 cores
    _say(f"N={plan.n:,} deferred tasks per scenario; expect roughly {guess / 60:.0f} min on 2 cores")
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-triggerer-") as tmp,
        running_server(Path(tmp) / "ml", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        base = Path(tmp)
        go = base / "GO"
        api.publish(SERVICE, VERSION, _hold_code(go), {"x": "numeric"}, {"i": "numeric", "y": "numeric"})
        with _deployment(base, plan, _conn_uri(server)) as deploy:
            _say("deployment up")
            ours = _ours(deploy, api, base / "out", go, plan)
            base_m = _baseline(deploy, base / "out", plan, ours.defer_seconds)
        sampler.sample()
        peak = sampler.peak_mib
    result.figures = [
        *_scenario_figures("ours", ours, plan.n),
        *_scenario_figures("baseline", base_m, plan.n),
        *_targets(ours, base_m, plan.n),
    ]
    result.notes += ours.notes + base_m.notes
    result.notes.append(
        f"N={plan.n:,} mapped tasks per scenario (one record each, poll_interval {POLL_S:g} s), LocalExecutor on "
        f"SQLite; settle {plan.settle:g} s, window {plan.window:g} s; resume latency over {plan.subset} tasks, "
        f"one finishing about every {PACE / 2:g} s"
    )
    result.notes.append(
        "memory = sum of VmHWM over the triggerer and its trigger runner, minus the same on the idle triggerer; "
        "CPU = their user+system time over the window; loop lag = lateness of a 0.1 s sleep in the triggerer"
    )
    full = Plan.for_run(False)
    full.n = 1_000
    per_ours, per_base = ours.defer_seconds / plan.n, base_m.defer_seconds / plan.n
    result.notes.append(
        f"deferral cost here: {per_ours:.2f} s a task (ours), {per_base:.2f} s (baseline); a full run (N=1,000) "
        f"should take about {estimate_seconds(full, per_ours, per_base) / 60:.0f} min"
    )
    result.server_peak_mib = peak
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result
