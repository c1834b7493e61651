"""``operator.scale``: the batch operator on a large data set, against the server's own rate, and its memory.

1,000,000 records (100,000 with ``--quick``) of a trivial service (``y = x``), Parquet in and out through
``file://``, chunks of 100,000 (10,000), two executions at a time, deferrable, run with ``airflow dags test`` in
a child process with its own ``AIRFLOW_HOME`` (the helpers of :mod:`bench.operator`). The DAG's first task does
nothing: under ``dags test`` the first task of the process starts Airflow's in-process Execution API, which a
deployment's API server has done long before; that cost is measured on its own (the empty DAG's one task). In
the same run:

* the server's raw rate: the same chunks started with raw HTTP two at a time (the next one as soon as one is
  complete, every body encoded before the clock starts), each polled every 50 ms; measured before, between and
  after two runs of the task (the raw rate moves by up to 15 % between passes on this machine, so each task run
  is set against the passes on both of its sides); and once more reading each finished chunk's results (its
  full answer, decoded, in a helper thread while the next chunk runs), which the task must do too: on 2 cores
  that reading takes CPU from the server;
* the task's end-to-end rate (TaskInstance start -> end from the DB) in each run and its ratio to the raw rate
  around it; the mean of the two ratios is the figure with a target (>= 0.9); the operator's own
  ``duration_seconds`` and ``airflow dags test``'s whole wall time besides;
* the peak RSS of the ``airflow dags test`` process tree (the sum of each process's own VmHWM, sampled) against
  a DAG whose one task does nothing, run the same way (target: at most 150 MiB more);
* the output read back: every record once, in order, the right values;
* a timeline, from a watcher that lists the service's executions every 50 ms: the first start after the task's
  start, the gap between a chunk finishing and the next start, and the time after the last chunk finished.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.common import (
    Api,
    BenchResult,
    ExecutionWatcher,
    Figure,
    TreeMemorySampler,
    client_peak_mib,
    running_server,
)
from bench.operator import ROOT, _airflow_env

SERVICE, VERSION, CODE = "identity", "1.0", "y = x"
SCALE_DAG, EMPTY_DAG = "bench_operator_scale", "bench_operator_empty"
RATIO_TARGET = 0.9
GROWTH_TARGET_MIB = 150.0
POLL_S = 0.05
PARALLEL = 10
ACTIVE = 2
#: Runs of the task, each between two passes of the raw rate.
TASK_RUNS = 2

DAGS = '''"""Written by bench/scale.py: the batch task at scale (after a task that does nothing), and a task that
does nothing."""
from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator

with DAG({scale!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    warm_up = PythonOperator(task_id="warm_up", python_callable=lambda: None)
    warm_up >> MLServerBatchOperator(
        task_id="score",
        service_name={service!r},
        service_version={version!r},
        records={records!r},
        output_path={output!r},
        chunk_size={chunk},
        max_active_executions={active},
        parallel_count={parallel},
        deferrable=True,
        poll_interval={poll},
    )

with DAG({empty!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    PythonOperator(task_id="score", python_callable=lambda: None)
'''


def _raw_seconds(api: Api, size: int, chunk: int, results: Api | None = None) -> float:
    """The same chunks, raw HTTP, two at a time (the next started as soon as one is complete), 50 ms polls.

    Every chunk's body is encoded (compact JSON, msgspec) before the clock starts, so that the client takes no
    CPU from the server but its requests. With ``results`` (a second session), each finished chunk's full answer
    (``showPartialResults=true``) is read and decoded in a helper thread while the others run, and the time
    includes the last one.
    """
    bodies = [
        msgspec.json.encode([{"x": float(i)} for i in range(first, min(first + chunk, size))])
        for first in range(0, size, chunk)
    ]
    path = f"/api/{SERVICE}/{VERSION}/batch?parallelCount={PARALLEL}"
    headers = {"Content-Type": "application/json"}
    running: list[str] = []
    fetched: list[Future[int]] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as fetcher:
        while bodies or running:
            while bodies and len(running) < ACTIVE:
                answer = api.request("POST", path, data=bodies.pop(0), headers=headers)
                running.append(answer.json()["batchExecutionId"])
            time.sleep(POLL_S)
            for execution_id in list(running):
                status = api.status(SERVICE, VERSION, execution_id, partial=False)
                state = str(status["state"]).lower()
                if state in ("failed", "canceled"):
                    raise RuntimeError(f"raw execution {execution_id} ended {state}: {status}")
                if state == "complete":
                    running.remove(execution_id)
                    if results is not None:
                        fetched.append(fetcher.submit(_results_count, results, execution_id))
        got = sum(f.result() for f in fetched)
    if results is not None and got != size:
        raise RuntimeError(f"raw results: {got:,} of {size:,} records")
    return time.perf_counter() - t0


def _results_count(api: Api, execution_id: str) -> int:
    """Read and decode one execution's full answer; answer how many results it holds."""
    status = api.status(SERVICE, VERSION, execution_id, partial=True)
    return len(status.get("batchExecutionResults") or [])


def _airflow(args: list[str], env: dict[str, str], timeout: float) -> tuple[float, float]:
    """Run ``airflow ARGS`` in a child, sampling its process tree; answer (wall seconds, peak RSS in MiB)."""
    t0 = time.perf_counter()
    with open(Path(env["AIRFLOW_HOME"]) / f"{args[0]}-{args[-1]}.log", "w") as log:
        child = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *args], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        with TreeMemorySampler(child.pid, interval=0.05) as sampler:
            code = child.wait(timeout)
            seconds = time.perf_counter() - t0
            sampler.sample()
    if code != 0:
        tail = (Path(env["AIRFLOW_HOME"]) / f"{args[0]}-{args[-1]}.log").read_text()[-3000:]
        raise RuntimeError(f"airflow {' '.join(args)} exited {code}: {tail}")
    return seconds, sampler.peak_mib or 0.0


def _task_times(dag_id: str, env: dict[str, str]) -> dict[str, Any]:
    """The task instance's state, start and end (epoch seconds), read from the child's DB by a child."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", dag_id],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"reading the task instance failed: {(done.stderr or done.stdout)[-2000:]}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def _check_output(output: Path, size: int) -> None:
    """Every record once, in order, ``y == x``, all succeeded."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["record", "x", "y", "success"])
    numbers = pa.array(range(size), pa.int64())
    if (
        table.num_rows != size
        or not pc.all(pc.equal(table["record"], numbers)).as_py()
        or not pc.all(pc.equal(table["x"], pc.cast(numbers, pa.float64()))).as_py()
        or not pc.all(pc.equal(table["y"], table["x"])).as_py()
        or not pc.all(table["success"]).as_py()
    ):
        raise RuntimeError(f"the output {output} is not the {size:,} expected rows in order")


def _timeline(watch: ExecutionWatcher, ti: dict[str, Any]) -> list[str]:
    """The first start after the task's start, the gaps between a chunk finishing and the next start, the end."""
    starts = sorted(watch.seen.values())
    ends = sorted(watch.done.values())
    if not starts or not ends:
        return []
    gaps = []
    for started in starts[ACTIVE:]:
        freed = [e for e in ends if e <= started]
        if freed:
            gaps.append(started - freed[-1])
    gap_text = ", ".join(f"{g:.2f}" for g in gaps)
    return [
        f"timeline: first chunk started {starts[0] - ti['start']:.2f} s after TI start; last chunk finished "
        f"{ends[-1] - ti['start']:.2f} s after it; TI end {ti['end'] - ends[-1]:.2f} s after the last chunk "
        "finished (the final pass writing the output)",
        f"gap from a chunk finishing to the next start (s, in order): {gap_text or 'none'}"
        + (f"; median {statistics.median(gaps):.2f}, max {max(gaps):.2f}" if gaps else ""),
    ]


@dataclass
class _TaskRun:
    """One ``airflow dags test`` of the scale DAG: its times, its peak memory, what the watcher saw."""

    wall: float
    peak: float
    ti: dict[str, Any]
    watch: ExecutionWatcher
    raw_rate: float = 0.0

    @property
    def task_seconds(self) -> float:
        return float(self.ti["end"] - self.ti["start"])

    @property
    def operator_seconds(self) -> float:
        return float(self.ti["operator_seconds"])


def _task_run(api: Api, env: dict[str, str], output: Path, size: int) -> _TaskRun:
    """Run the scale DAG once, watching the executions it starts; check its output (then remove it)."""
    known = set(api.request("GET", f"/api/{SERVICE}/{VERSION}/batch").json())
    with ExecutionWatcher(api, SERVICE, VERSION, known, POLL_S) as watch:
        wall, peak = _airflow(["dags", "test", SCALE_DAG], env, 3600)
    ti = _task_times(SCALE_DAG, env)
    if ti["state"] != "success":
        raise RuntimeError(f"the batch task ended {ti['state']}: see {env['AIRFLOW_HOME']}")
    _check_output(output, size)
    output.unlink()
    return _TaskRun(wall, peak, ti, watch)


def bench_scale(quick: bool) -> BenchResult:
    """The batch operator at 1M records, Parquet in/out: end-to-end rate vs the server's raw rate, memory vs empty."""
    size, chunk = (100_000, 10_000) if quick else (1_000_000, 100_000)
    started = time.perf_counter()
    result = BenchResult("operator.scale")
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-scale-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, server_memory),
        Api(server) as api,
    ):
        import pyarrow as pa
        import pyarrow.parquet as pq

        base = Path(tmp)
        api.publish(SERVICE, VERSION, CODE, {"x": "numeric"}, {"y": "numeric"})
        api.wait_finished(SERVICE, VERSION, api.start_batch(SERVICE, VERSION, [{"x": 1.0}] * 20, PARALLEL))
        pq.write_table(pa.table({"x": pa.array(range(size), pa.float64())}), base / "in.parquet")
        dags, home, output = base / "dags", base / "airflow", base / "out.parquet"
        dags.mkdir()
        home.mkdir()
        (dags / "bench_scale_dags.py").write_text(
            DAGS.format(
                scale=SCALE_DAG,
                empty=EMPTY_DAG,
                service=SERVICE,
                version=VERSION,
                records=f"file://{base / 'in.parquet'}",
                output=str(output),
                chunk=chunk,
                active=ACTIVE,
                parallel=PARALLEL,
                poll=POLL_S,
            )
        )
        env = _airflow_env(home, dags, server)
        _airflow(["db", "migrate"], env, 600)
        raws = [_raw_seconds(api, size, chunk)]
        empty_wall, empty_peak = _airflow(["dags", "test", EMPTY_DAG], env, 600)
        runs: list[_TaskRun] = []
        for _ in range(TASK_RUNS):
            runs.append(_task_run(api, env, output, size))
            raws.append(_raw_seconds(api, size, chunk))
        with Api(server) as second:
            raw_results = _raw_seconds(api, size, chunk, results=second)
        empty_ti = _task_times(EMPTY_DAG, env)
        server_memory.sample()
        server_peak = server_memory.peak_mib
    raw_rate = size / statistics.mean(raws)
    for number, run in enumerate(runs):
        run.raw_rate = size / statistics.mean(raws[number : number + 2])  # the passes just before and after
    ratio = statistics.mean(size / r.task_seconds / r.raw_rate for r in runs)
    peak = max(r.peak for r in runs)
    growth = peak - empty_peak
    empty_seconds = empty_ti["end"] - empty_ti["start"]
    each = "; ".join(
        f"run {n + 1}: TI {r.task_seconds:.1f} s, x{size / r.task_seconds / r.raw_rate:.2f}"
        for n, r in enumerate(runs)
    )
    result.figures = [
        Figure(
            f"server raw rate (mean of {len(raws)})",
            raw_rate,
            "rec/s",
            ", ".join(f"{seconds:.1f}" for seconds in raws) + " s (before, between and after the task runs)",
        ),
        Figure(
            "raw rate, results read too",
            size / raw_results,
            "rec/s",
            f"x{size / raw_results / raw_rate:.2f} of raw; {raw_results:.1f} s (each chunk's answer read while the "
            "next runs)",
        ),
        Figure(
            "task end-to-end rate (TI)",
            statistics.mean(size / r.task_seconds for r in runs),
            "rec/s",
            f"mean of {len(runs)}; {each}",
        ),
        Figure(
            "task rate / raw rate around it",
            ratio,
            "x",
            f"mean of {len(runs)}; target >= {RATIO_TARGET:.2f}",
            "PASS" if ratio >= RATIO_TARGET else "MISS",
        ),
        Figure(
            "operator's own rate (execute -> end)",
            statistics.mean(size / r.operator_seconds for r in runs),
            "rec/s",
            "x"
            + ", x".join(f"{size / r.operator_seconds / r.raw_rate:.2f}" for r in runs)
            + " of raw; duration_seconds "
            + ", ".join(f"{r.operator_seconds:.1f}" for r in runs),
        ),
        Figure(
            "Airflow's first task under dags test",
            empty_seconds,
            "s",
            "the empty DAG's one task, TI start -> end: the in-process Execution API starting (the scale DAG "
            "pays it in its first task)",
        ),
        Figure(
            "airflow dags test wall time",
            statistics.mean(r.wall for r in runs),
            "s",
            ", ".join(f"{r.wall:.1f}" for r in runs) + " s; start-up and the no-op first task included",
        ),
        Figure(
            "peak RSS, task tree", peak, "MiB", f"empty task {empty_peak:.0f} MiB (wall {empty_wall:.1f} s)"
        ),
        Figure(
            "peak RSS growth over empty task",
            growth,
            "MiB",
            f"target <= {GROWTH_TARGET_MIB:.0f}",
            "PASS" if growth <= GROWTH_TARGET_MIB else "MISS",
        ),
        Figure(
            "executions each run started",
            statistics.mean(len(r.watch.seen) for r in runs),
            "",
            ", ".join(str(len(r.watch.seen)) for r in runs) + f"; {-(-size // chunk)} chunks",
        ),
    ]
    result.notes.append(
        f"{size:,} records of y = x, Parquet in and out (file://), chunk_size {chunk:,}, max_active_executions "
        f"{ACTIVE}, parallel_count {PARALLEL}, deferrable, poll_interval {POLL_S:g} s, 2 server workers; output "
        "checked (every record once, in order, y == x)"
    )
    for number, run in enumerate(runs):
        result.notes.extend(f"run {number + 1} {line}" for line in _timeline(run.watch, run.ti))
    result.notes.append(
        "peak RSS = sum of each process's own VmHWM in the `airflow dags test` tree, sampled every 50 ms; raw rate = "
        "the same chunks with raw HTTP, 2 at a time, polled every 50 ms, before, between and after the task runs; "
        "each run's ratio is against the mean of the passes on both of its sides"
    )
    result.server_peak_mib = server_peak
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result


def _ti_main(dag_id: str) -> int:
    """In a child with the Airflow environment: the task instance of ``dag_id``'s latest run, as JSON."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=dag_id, task_id="score")
            .order_by(TaskInstance.start_date.desc())
            .first()
        )
        row = (
            None
            if ti is None
            else session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=ti.run_id, task_id="score", key="return_value")
            .one_or_none()
        )
        summary = None if row is None else XComModel.deserialize_value(row)
        answer = {
            "state": str(ti.state) if ti else None,
            "start": ti.start_date.timestamp() if ti and ti.start_date else None,
            "end": ti.end_date.timestamp() if ti and ti.end_date else None,
            "operator_seconds": summary.get("duration_seconds") if isinstance(summary, dict) else None,
        }
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_ti_main(sys.argv[1]))
