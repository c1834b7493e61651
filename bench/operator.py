"""Benchmarks of the Airflow side: the batch operator's end-to-end overhead and the trigger's event-loop cost.

* ``operator.overhead``: a real deferrable ``MLServerBatchOperator`` task run with ``dag.test()`` (records
  from a CSV via ``file://``, results to Parquet), against the same batch started with raw HTTP on the same
  server: task wall time / server-side execution time.
* ``operator.triggers``: hundreds of ``MLServerBatchTrigger`` s iterated in one asyncio loop (as the triggerer
  does) against long-running executions: event-loop lag, CPU and memory, against the idle loop.

Airflow reads its configuration when first imported, so both run their Airflow part in a child process
(``python -m bench.operator overhead|triggers ...``) with its own temporary ``AIRFLOW_HOME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow_mlserver.server.process import LocalMLServer
from bench.common import (
    Api,
    BenchResult,
    ExecutionWatcher,
    Figure,
    client_peak_mib,
    percentile,
    running_server,
)

VERSION = "1.0"
SLEEP5 = "sleep5ms"
SLEEP5_CODE = "import time\ntime.sleep(0.005)\ny = x"
LONG = "sleeplong"
LONG_CODE = "import time\ntime.sleep(300)\ny = x"
CONN_ID = "mlserver_default"
OVERHEAD_TARGET = 1.10
LAG_TARGET_MS = 50.0
SAMPLER_STEP_S = 0.010
TRIGGER_POLL_S = 2.0
DAG_ID = "bench_operator_overhead"
ROOT = Path(__file__).resolve().parent.parent


def _conn_uri(server: LocalMLServer) -> str:
    return f"mlserver://{server.username}:{quote(server.password, safe='')}@127.0.0.1:{server.port}"


def _airflow_env(home: Path, dags: Path, server: LocalMLServer) -> dict[str, str]:
    """The child's environment: a private AIRFLOW_HOME and DAGs folder, no examples, the server connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW_CONN_MLSERVER_DEFAULT": _conn_uri(server),
        }
    )
    return env


def _child(mode: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.operator MODE ARGS`` and answer the JSON of its last stdout line."""
    cmd = [sys.executable, "-m", "bench.operator", mode, *args]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"{mode} child failed ({done.returncode}): {(done.stderr or done.stdout)[-3000:]}")
    answer: dict[str, Any] = json.loads(lines[-1])
    if answer.get("error"):
        raise RuntimeError(f"{mode} child: {answer['error']}")
    return answer


def _finish(result: BenchResult, started: float, peak: float | None) -> BenchResult:
    result.server_peak_mib = peak
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result


# -- (a) end-to-end overhead of the Airflow task --------------------------------------------------------------
DAG_TEMPLATE = '''"""Written by bench/operator.py: one deferrable batch task."""
from datetime import datetime

from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    MLServerBatchOperator(
        task_id="score",
        service_name={service!r},
        service_version={version!r},
        records={records!r},
        output_path={output!r},
        parallel_count={parallel},
        deferrable=True,
        poll_interval={poll},
    )
'''


def bench_overhead(quick: bool) -> BenchResult:
    """Wall time of a deferrable batch task (dag.test) / server time of the same batch started raw."""
    size, parallel, poll = (1_000 if quick else 10_000), 10, 1.0
    started = time.perf_counter()
    result = BenchResult("operator.overhead")
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-op-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        base = Path(tmp)
        api.publish(SLEEP5, VERSION, SLEEP5_CODE, {"x": "numeric"}, {"y": "numeric"})
        api.wait_finished(SLEEP5, VERSION, api.start_batch(SLEEP5, VERSION, [{"x": 1.0}] * 20, parallel))
        records = [{"x": float(i)} for i in range(size)]
        (base / "in.csv").write_text("x\n" + "".join(f"{r['x']}\n" for r in records))
        # baseline: the same batch, raw HTTP, 50 ms polls of the state only
        t0 = time.perf_counter()
        execution_id = api.start_batch(SLEEP5, VERSION, records, parallel)
        status, _ = api.wait_finished(SLEEP5, VERSION, execution_id, timeout=600)
        baseline = time.perf_counter() - t0
        if str(status["state"]).lower() != "complete" or status.get("failedItemCount"):
            raise RuntimeError(f"baseline batch did not complete cleanly: {status}")
        # the Airflow task, in its own process and AIRFLOW_HOME
        dags, home, output = base / "dags", base / "airflow", base / "out.parquet"
        dags.mkdir()
        home.mkdir()
        (dags / "bench_overhead_dag.py").write_text(
            DAG_TEMPLATE.format(
                dag_id=DAG_ID,
                service=SLEEP5,
                version=VERSION,
                records=f"file://{base / 'in.csv'}",
                output=str(output),
                parallel=parallel,
                poll=poll,
            )
        )
        known = set(api.request("GET", f"/api/{SLEEP5}/{VERSION}/batch").json())
        with ExecutionWatcher(api, SLEEP5, VERSION, known) as watcher:
            side = _child(
                "overhead", [str(dags / "bench_overhead_dag.py")], _airflow_env(home, dags, server), 900
            )
        if side["state"] != "success" or side["ti_state"] != "success":
            raise RuntimeError(f"the Airflow run ended {side['state']} / task {side['ti_state']}: {side}")
        import pandas as pd

        frame = pd.read_parquet(output)
        if (
            len(frame) != size
            or not frame["success"].all()
            or frame["y"].tolist() != [r["x"] for r in records]
        ):
            raise RuntimeError(f"the results in {output} are not the {size} expected rows")
        sampler.sample()
        peak = sampler.peak_mib
    task = side["ti_seconds"]
    ratio = task / baseline
    result.figures = [
        Figure("server time, raw HTTP (baseline)", baseline, "s", f"{size / baseline:,.0f} rec/s"),
        Figure(
            "Airflow task wall time",
            task,
            "s",
            f"x{task / baseline:.2f} vs baseline",
        ),
        Figure(
            "task / server time",
            ratio,
            "x",
            f"target <= {OVERHEAD_TARGET:.2f}",
            "PASS" if ratio <= OVERHEAD_TARGET else "MISS",
        ),
        Figure("overhead (task - server time)", task - baseline, "s"),
        Figure("dag.test() total", side["dag_test_seconds"], "s", "incl. bundle sync, parsing"),
    ]
    seen_at, done_at = _execution_span(watcher)
    if seen_at is not None and done_at is not None:
        result.figures.append(
            Figure(
                "server time of the task's execution",
                done_at - seen_at,
                "s",
                f"task x{task / (done_at - seen_at):.2f} of it",
            )
        )
    if side.get("summary_seconds") is not None:
        own = side["summary_seconds"]
        result.figures.append(
            Figure(
                "operator's duration_seconds", own, "s", f"x{own / baseline:.2f} vs baseline (execute() on)"
            )
        )
    result.notes.append(
        f"{size:,} records, service sleeps 5 ms a record, parallelCount {parallel}, 2 workers; "
        f"deferrable=True, poll_interval {poll:g} s; records from CSV (file://), results to Parquet"
    )
    result.notes.append(
        "task wall time = TaskInstance end_date - start_date (read from the DB after dag.test, deferral "
        "included); baseline = raw POST .../batch to state Complete, polled every 50 ms, same server, same run"
    )
    line = _timeline(side["timeline"], watcher)
    if line:
        result.notes.append(line)
    result.notes.append(
        f"Airflow child: initdb {side['initdb_seconds']:.1f} s (not timed), peak RSS {side['peak_mib']:.0f} MiB"
    )
    return _finish(result, started, peak)


def _execution_span(watcher: ExecutionWatcher) -> tuple[float | None, float | None]:
    """When the task's one execution was first listed and when it ended (late by up to one 50 ms poll)."""
    seen_at = min(watcher.seen.values(), default=None)
    done_at = max(watcher.done.values(), default=None)
    return seen_at, done_at


def _timeline(marks: dict[str, float | None], watcher: ExecutionWatcher) -> str:
    """Seconds from dag.test()'s start to each mark, in time order (epoch clocks of parent and child agree)."""
    seen_at, done_at = _execution_span(watcher)
    points = {
        "TI start": marks.get("ti_start"),
        "execution first seen": seen_at,
        "execution finished": done_at,
        "TI end": marks.get("ti_end"),
        "dag.test end": marks.get("dag_test_end"),
    }
    zero = marks.get("dag_test_start")
    if zero is None:
        return ""
    known = sorted((t, n) for n, t in points.items() if t is not None)
    return "timeline from dag.test() start: " + ", ".join(f"{n} +{t - zero:.2f} s" for t, n in known)


def _overhead_side(dag_file: str) -> dict[str, Any]:
    """In the child: migrate the DB, run the DAG with dag.test(), read the task instance's times."""
    t0 = time.perf_counter()
    from airflow.utils.db import initdb

    initdb()
    initdb_seconds = time.perf_counter() - t0
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=dag_file)
    if bag.import_errors:
        return {"error": f"DAG import errors: {bag.import_errors}"}
    dag = bag.get_dag(DAG_ID)
    t0, test_start = time.perf_counter(), time.time()
    dagrun = dag.test()
    dag_test_seconds = time.perf_counter() - t0
    test_end = time.time()
    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=dagrun.run_id, task_id="score").one()
        row = (
            session.query(XComModel)
            .filter_by(dag_id=DAG_ID, run_id=dagrun.run_id, task_id="score", key="return_value")
            .one_or_none()
        )
        summary = None if row is None else XComModel.deserialize_value(row)
        ti_seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        ti_state = str(ti.state)
        ti_start = ti.start_date.timestamp() if ti.start_date else None
        ti_end = ti.end_date.timestamp() if ti.end_date else None
    return {
        "state": str(dagrun.state),
        "ti_state": ti_state,
        "ti_seconds": ti_seconds,
        "dag_test_seconds": dag_test_seconds,
        "initdb_seconds": initdb_seconds,
        "timeline": {
            "dag_test_start": test_start,
            "dag_test_end": test_end,
            "ti_start": ti_start,
            "ti_end": ti_end,
        },
        "summary_seconds": summary.get("duration_seconds") if isinstance(summary, dict) else None,
        "peak_mib": client_peak_mib(),
    }


# -- (b) many triggers in one event loop --------------------------------------------------------------------
def bench_triggers(quick: bool) -> BenchResult:
    """Event-loop lag (p50/p99/max), CPU and memory of N MLServerBatchTriggers in one loop vs an idle loop."""
    triggers, executions, duration, idle = (100, 100, 15.0, 3.0) if quick else (500, 500, 30.0, 5.0)
    started = time.perf_counter()
    result = BenchResult("operator.triggers")
    ids: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-trig-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        api.publish(LONG, VERSION, LONG_CODE, {"x": "numeric"}, {"y": "numeric"})
        try:
            t0 = time.perf_counter()
            for i in range(executions):
                ids.append(api.start_batch(LONG, VERSION, [{"x": float(i)}, {"x": float(i + 1)}], 1))
            start_seconds = time.perf_counter() - t0
            home = Path(tmp) / "airflow"
            home.mkdir()
            (Path(tmp) / "dags").mkdir()
            env = _airflow_env(home, Path(tmp) / "dags", server)
            ids_file = Path(tmp) / "ids.json"
            ids_file.write_text(json.dumps(ids))
            args = [str(ids_file), str(triggers), str(duration), str(idle)]
            side = _child("triggers", args, env, duration + idle + 180)
        finally:
            for execution_id in ids:
                with contextlib.suppress(Exception):
                    api.request("DELETE", f"/api/{LONG}/{VERSION}/batch/{execution_id}")
        states = {str(api.status(LONG, VERSION, e, partial=False)["state"]).lower() for e in ids[:5]}
        sampler.sample()
        peak = sampler.peak_mib
    idle_lag, lag, steady = side["idle"], side["busy"], side["steady"]
    p99 = lag["p99"]
    result.figures = [
        Figure("idle loop lag p50 (baseline)", idle_lag["p50"], "ms"),
        Figure("idle loop lag p99 (baseline)", idle_lag["p99"], "ms"),
        Figure(
            f"{triggers} triggers: lag p50", lag["p50"], "ms", f"x{lag['p50'] / idle_lag['p50']:.1f} vs idle"
        ),
        Figure(
            f"{triggers} triggers: lag p99",
            p99,
            "ms",
            f"target <= {LAG_TARGET_MS:g}; x{p99 / idle_lag['p99']:.1f} vs idle",
            "PASS" if p99 <= LAG_TARGET_MS else "MISS",
        ),
        Figure(f"{triggers} triggers: lag max", lag["max"], "ms", f"idle max {idle_lag['max']:.1f} ms"),
        Figure("steady state (after 1st round): p99", steady["p99"], "ms", f"max {steady['max']:.1f} ms"),
        Figure(
            "full garbage collections: longest",
            max(side["full_gc_ms"], default=0.0),
            "ms",
            f"{len(side['full_gc_ms'])} while the triggers ran (each pauses the loop)",
        ),
        Figure("CPU of the loop's process", side["cpu_pct"], "% core", f"idle {side['idle_cpu_pct']:.1f} %"),
        Figure("polls done", side["polls"], "", f"{side['polls'] / duration:,.0f}/s"),
        Figure("poll latency p50 / p99", side["poll_p50_ms"], "ms", f"p99 {side['poll_p99_ms']:.0f} ms"),
        Figure(
            "secrets masker add_mask: total",
            side["mask_total_s"],
            "s",
            f"{side['mask_calls']:,} calls, max {side['mask_max_ms']:.0f} ms, {side['mask_patterns']:,} patterns",
        ),
        Figure(
            "trigger process peak RSS", side["peak_mib"], "MiB", f"+{side['grow_mib']:.1f} MiB for triggers"
        ),
    ]
    result.notes.append(
        f"{triggers} triggers, one execution each ({executions} executions of a service sleeping 300 s a record, "
        f"2 records, parallelCount 1, --workers 2; started raw in {start_seconds:.1f} s); poll_interval "
        f"{TRIGGER_POLL_S:g} s; {duration:g} s with triggers, {idle:g} s idle baseline first"
    )
    result.notes.append(
        f"sampler: asyncio.sleep({SAMPLER_STEP_S * 1000:g} ms) in a loop, lag = how late it wakes; "
        f"{lag['n']:,} samples with triggers, {idle_lag['n']:,} idle; steady = after the first "
        f"{TRIGGER_POLL_S + 1:g} s (the start burst: first polls spread over one poll interval); connection reads "
        f"from Airflow: {side.get('conn_reads', 'n/a')}, logins: {side.get('logins', 'n/a')}, shared clients "
        f"while running: {side.get('clients', 'n/a')}"
    )
    result.notes.append(
        f"events before cancel: {side['events']}; errors: {side['errors']}; after cleanup, sample states: "
        f"{sorted(states)}; CPU = getrusage user+sys / wall of the child"
    )
    return _finish(result, started, peak)


def _lag_stats(lags: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(lags, 50),
        "p99": percentile(lags, 99),
        "max": max(lags) if lags else float("nan"),
        "n": len(lags),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sample(seconds: float, stamps: list[tuple[float, float]]) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await asyncio.sleep(SAMPLER_STEP_S)
        stamps.append((t0, (time.perf_counter() - t0 - SAMPLER_STEP_S) * 1000))


async def _triggers_main(ids: list[str], count: int, duration: float, idle: float) -> dict[str, Any]:
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.triggers.batch import MLServerBatchTrigger

    poll_ms: list[float] = []
    original = MLServerHook.async_get_batch

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            poll_ms.append((time.perf_counter() - t0) * 1000)

    MLServerHook.async_get_batch = counted  # type: ignore[method-assign]

    # Connection reads from Airflow and logins: one each per connection, however many triggers.
    from airflow_mlserver.client.aio import AsyncDriver

    conn_reads: list[str] = []
    aget_connection = MLServerHook.aget_connection.__func__  # type: ignore[attr-defined]

    async def counted_read(cls: Any, conn_id: str) -> Any:
        conn_reads.append(conn_id)
        return await aget_connection(cls, conn_id)

    MLServerHook.aget_connection = classmethod(counted_read)  # type: ignore[method-assign,assignment]
    logins: list[str] = []
    send_once = AsyncDriver._send_once

    async def counted_send(self: Any, session: Any, wire: Any) -> Any:
        if wire.spec.path == "/login":
            logins.append(wire.spec.path)
        return await send_once(self, session, wire)

    AsyncDriver._send_once = counted_send  # type: ignore[method-assign]

    # Time spent in Airflow's secrets masker (each new secret recompiles one regex of all secrets so far).
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

    mask_ms: list[float] = []
    add_mask = SecretsMasker.add_mask

    def timed_add_mask(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return add_mask(self, *args, **kwargs)
        finally:
            mask_ms.append((time.perf_counter() - t0) * 1000)

    SecretsMasker.add_mask = timed_add_mask  # type: ignore[method-assign]

    idle_stamps: list[tuple[float, float]] = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    await _sample(idle, idle_stamps)
    idle_cpu = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0) * 100
    base_mib = client_peak_mib()

    events: list[str] = []
    errors: list[str] = []

    async def drive(trigger: MLServerBatchTrigger) -> None:
        try:
            async for event in trigger.run():
                events.append(str(event.payload.get("status")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    # Python's full garbage collections (generation 2), timed: each pauses the whole loop
    full_gc_ms: list[float] = []
    gc_started = [0.0]

    def time_full_gc(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") == 2:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                full_gc_ms.append((time.perf_counter() - gc_started[0]) * 1000)

    gc.callbacks.append(time_full_gc)
    stamps: list[tuple[float, float]] = []
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    tasks = [
        asyncio.create_task(
            drive(
                MLServerBatchTrigger(
                    mlserver_conn_id=CONN_ID,
                    service_name=LONG,
                    service_version=VERSION,
                    execution_ids=[ids[i % len(ids)]],
                    poll_interval=TRIGGER_POLL_S,
                )
            )
        )
        for i in range(count)
    ]
    await _sample(duration, stamps)
    cpu = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0) * 100
    gc.callbacks.remove(time_full_gc)
    from airflow_mlserver.hooks.shared import shared_stats

    clients = shared_stats().hooks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    steady_from = wall0 + TRIGGER_POLL_S + 1
    return {
        "idle": _lag_stats([lag for _, lag in idle_stamps]),
        "busy": _lag_stats([lag for _, lag in stamps]),
        "steady": _lag_stats([lag for t, lag in stamps if t >= steady_from]),
        "cpu_pct": cpu,
        "idle_cpu_pct": idle_cpu,
        "polls": len(poll_ms),
        "poll_p50_ms": percentile(poll_ms, 50),
        "poll_p99_ms": percentile(poll_ms, 99),
        "conn_reads": len(conn_reads),
        "logins": len(logins),
        "clients": clients,
        "mask_calls": len(mask_ms),
        "mask_total_s": sum(mask_ms) / 1000,
        "mask_max_ms": max(mask_ms, default=0.0),
        "mask_patterns": _mask_patterns(),
        "events": len(events),
        "errors": len(errors) and f"{len(errors)}, first: {errors[0]}",
        "peak_mib": client_peak_mib(),
        "grow_mib": client_peak_mib() - base_mib,
        "full_gc_ms": full_gc_ms,
    }


def _mask_patterns() -> int:
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    return len(_secrets_masker().patterns)


def _triggers_side(ids_file: str, count: str, duration: str, idle: str) -> dict[str, Any]:
    import airflow_mlserver.triggers.batch  # noqa: F401 - import Airflow before the clock starts

    ids = json.loads(Path(ids_file).read_text())
    return asyncio.run(_triggers_main(ids, int(count), float(duration), float(idle)))


def _side_main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    try:
        answer = _overhead_side(*args) if mode == "overhead" else _triggers_side(*args)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_side_main(sys.argv[1:]))
