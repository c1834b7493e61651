"""Benchmarks of the local Machine Learning Server, spoken to over raw HTTP (no hook in between).

* ``server.latency``: request-response latency of a trivial service, against ``GET /status`` as the
  floor of one authenticated HTTP round trip on the same keep-alive session.
* ``server.batch``: batch throughput of a trivial service at parallelCount 1, 2 and 10, against the limit of
  the machine: a bare two-process pool computing the same function over the same records, JSON in and out.
* ``server.scaling``: the speed-up of a CPU-bound batch from ``--workers 1`` to ``--workers 2``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    Api,
    BenchResult,
    Figure,
    HostLoad,
    TreeMemorySampler,
    client_peak_mib,
    percentile,
    running_server,
)

VERSION = "1.0"
TRIVIAL = "plus_one"
TRIVIAL_CODE = "y = x + 1"
CPU = "busy_loop"
CPU_CODE = "t = 0\nfor i in range(n):\n    t += i % 7\ny = t"
SPEEDUP_TARGET = 1.7
BUSY_HOST_CORES = 0.25  # above this much foreign load, scaling figures are flagged as unreliable


def _load_note(what: str, load: HostLoad) -> str:
    if load.foreign_cores is None:
        return f"{what}: host load unknown"
    flag = "  <- host busy, figure unreliable" if load.foreign_cores > BUSY_HOST_CORES else ""
    return f"{what}: other processes kept {load.foreign_cores:.2f} cores busy{flag}"


def _publish_trivial(api: Api) -> None:
    api.publish(TRIVIAL, VERSION, TRIVIAL_CODE, {"x": "numeric"}, {"y": "numeric"})


def _run_batch(
    api: Api, name: str, records: list[dict[str, Any]], parallel: int
) -> tuple[float, dict[str, Any], int]:
    """Seconds from the POST that starts the batch to its state reaching Complete; the final status; polls."""
    started = time.perf_counter()
    execution_id = api.start_batch(name, VERSION, records, parallel)
    status, polls = api.wait_finished(name, VERSION, execution_id)
    elapsed = time.perf_counter() - started
    if str(status["state"]).lower() != "complete" or status.get("failedItemCount"):
        raise RuntimeError(f"batch of {name} did not complete cleanly: {status}")
    status["batchExecutionId"] = execution_id
    return elapsed, status, polls


def _fetch_results(api: Api, name: str, execution_id: str, expected: int) -> float:
    """Seconds to download the full results list; checks every record succeeded."""
    started = time.perf_counter()
    results = api.status(name, VERSION, execution_id, partial=True)["batchExecutionResults"]
    elapsed = time.perf_counter() - started
    if len(results) != expected or not all(r["success"] for r in results):
        raise RuntimeError(f"{name}: expected {expected} successful results, got {len(results)}")
    return elapsed


def _finish(result: BenchResult, started: float, server_peaks: list[float | None]) -> BenchResult:
    known = [p for p in server_peaks if p is not None]
    result.server_peak_mib = max(known) if known else None
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result


# -- (1) request-response latency -----------------------------------------------------------------------
def bench_latency(quick: bool) -> BenchResult:
    """p50/p99 of ``POST /api/plus_one/1.0`` on one keep-alive session, after warm-up; GET /status as baseline."""
    calls, warmup = (200, 30) if quick else (500, 50)
    started = time.perf_counter()
    result = BenchResult("server.latency")
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        _publish_trivial(api)
        for i in range(warmup):
            api.consume(TRIVIAL, VERSION, {"x": float(i)})
            api.request("GET", "/status")
        floor: list[float] = []
        for _ in range(calls):
            t0 = time.perf_counter()
            api.request("GET", "/status")
            floor.append((time.perf_counter() - t0) * 1000)
        fresh: list[float] = []
        for _ in range(min(calls, 100)):
            t0 = time.perf_counter()
            requests.get(
                f"{server.url}/status", headers=dict(api.session.headers), timeout=30
            ).raise_for_status()
            fresh.append((time.perf_counter() - t0) * 1000)
        latencies: list[float] = []
        loop_started = time.perf_counter()
        for i in range(calls):
            t0 = time.perf_counter()
            answer = api.consume(TRIVIAL, VERSION, {"x": float(i)})
            latencies.append((time.perf_counter() - t0) * 1000)
            if answer["outputParameters"]["y"] != i + 1:
                raise RuntimeError(f"plus_one({i}) answered {answer['outputParameters']}")
        loop_seconds = time.perf_counter() - loop_started
        sampler.sample()
        peak = sampler.peak_mib
    floor_p50, p50, p99 = percentile(floor, 50), percentile(latencies, 50), percentile(latencies, 99)
    fresh_p50 = percentile(fresh, 50)
    result.figures = [
        Figure("consume p50", p50, "ms", f"x{p50 / floor_p50:.1f} vs GET /status p50"),
        Figure("consume p99", p99, "ms", f"x{p99 / p50:.1f} vs its p50"),
        Figure("consume mean", statistics.fmean(latencies), "ms"),
        Figure("consume sequential rate", calls / loop_seconds, "calls/s"),
        Figure("GET /status p50 (baseline)", floor_p50, "ms"),
        Figure("GET /status p99", percentile(floor, 99), "ms"),
        Figure(
            "GET /status p50, new connection", fresh_p50, "ms", f"x{fresh_p50 / floor_p50:.2f} vs keep-alive"
        ),
    ]
    result.notes.append(
        f"{calls} calls of each after {warmup} warm-up calls, one keep-alive session, 2 workers"
    )
    if floor_p50 > 30 and floor_p50 > 5 * fresh_p50:
        result.notes.append(
            "keep-alive round trips take ~40 ms but fresh connections do not: the signature of Nagle's algorithm "
            "meeting delayed ACKs (the server's accepted sockets lack TCP_NODELAY)"
        )
    return _finish(result, started, [peak])


# -- (2) batch throughput ---------------------------------------------------------------------------------
_TRIVIAL_COMPILED = compile(TRIVIAL_CODE, "<bare>", "exec")
BARE_GROUP = 256  # records per message of the bare pool, as the server's largest group


def _bare_group(lines: str) -> str:
    """The trivial service over JSON lines of records, as a bare process would run it: JSON lines of results."""
    out = []
    for line in lines.splitlines():
        env = json.loads(line)
        exec(_TRIVIAL_COMPILED, env)
        out.append(json.dumps({"y": env["y"]}))
    return "\n".join(out)


def bare_pool_rate(records: list[dict[str, Any]]) -> float:
    """Records/s of two bare processes running the trivial service over ``records`` in groups, JSON in and out.

    The limit of this machine for the batch: no HTTP, no database, no per-record answer beyond the outputs.
    Starting the pool is not timed.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(2) as pool:
        pool.map(_bare_group, ['{"x": 0}'] * 4)  # both processes up and warm
        t0 = time.perf_counter()
        lines = [json.dumps(r) for r in records]
        groups = ["\n".join(lines[i : i + BARE_GROUP]) for i in range(0, len(lines), BARE_GROUP)]
        results = [
            json.loads(line)
            for text in pool.map(_bare_group, groups, chunksize=1)
            for line in text.split("\n")
        ]
        seconds = time.perf_counter() - t0
    if len(results) != len(records) or results[-1]["y"] != records[-1]["x"] + 1:
        raise RuntimeError(f"bare pool answered {len(results)} results for {len(records)} records")
    return len(records) / seconds


def bench_batch(quick: bool) -> BenchResult:
    """Records/s of a trivial batch at parallelCount 1, 2, 10 (POST start to state Complete, 50 ms polls).

    The machine's limit is measured in the same run (a bare two-process pool, before and after the server's
    batches: the better of the two), and the server's best rate is shown as a share of it.
    """
    size = 2000 if quick else 20000
    started = time.perf_counter()
    result = BenchResult("server.batch")
    rates: dict[int, float] = {}
    records = [{"x": float(i)} for i in range(size)]
    bare = [bare_pool_rate(records)]
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        _publish_trivial(api)
        _run_batch(api, TRIVIAL, [{"x": float(i)} for i in range(200)], 2)  # load the service in the workers
        for parallel in (1, 2, 10):
            with HostLoad() as load:
                seconds, status, polls = _run_batch(api, TRIVIAL, records, parallel)
            rates[parallel] = size / seconds
            versus = "" if parallel == 1 else f"x{rates[parallel] / rates[1]:.2f} vs parallelCount 1"
            result.figures.append(Figure(f"parallelCount {parallel}", rates[parallel], "rec/s", versus))
            result.notes.append(
                f"parallelCount {parallel}: {size} records in {seconds:.2f} s ({polls} polls)"
            )
            result.notes.append(_load_note(f"parallelCount {parallel}", load))
            if parallel == 10:
                fetch = _fetch_results(api, TRIVIAL, status["batchExecutionId"], size)
                result.figures.append(Figure(f"results download ({size} records)", fetch * 1000, "ms"))
        sampler.sample()
        peak = sampler.peak_mib
    bare.append(bare_pool_rate(records))
    limit = max(bare)
    result.figures.append(
        Figure(
            "limit: bare 2-process pool",
            limit,
            "rec/s",
            f"parallelCount 10 is {rates[10] / limit:.0%} of it",
        )
    )
    result.notes.append(
        f"bare pool (JSON lines in, JSON out, groups of {BARE_GROUP}): {bare[0]:,.0f} rec/s before the server, "
        f"{bare[1]:,.0f} after"
    )
    result.notes.append("2 workers; trivial service y = x + 1")
    return _finish(result, started, [peak])


# -- (3) CPU scaling with workers -------------------------------------------------------------------------
def calibrate_loop(target_ms: float) -> int:
    """The ``n`` for which CPU_CODE takes about ``target_ms`` here (run the way a worker runs it: exec)."""
    code = compile(CPU_CODE, "<calibrate>", "exec")
    n = 20_000
    while True:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            exec(code, {"n": n})
            best = min(best, time.perf_counter() - t0)
        if best * 1000 >= 5:
            return max(1000, int(n * target_ms / (best * 1000)))
        n *= 4


def _burn(n: int, count: int, barrier: Any) -> None:
    code = compile(CPU_CODE, "<burn>", "exec")
    barrier.wait()
    for _ in range(count):
        exec(code, {"n": n})


def host_ceiling(n: int, records: int) -> tuple[float, float]:
    """Seconds for ``records`` runs of the CPU loop in one bare child process, and split over two (no server)."""
    methods = multiprocessing.get_all_start_methods()
    ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    times: list[float] = []
    for procs in (1, 2):
        barrier = ctx.Barrier(procs + 1)
        shares = [records // procs + (1 if i < records % procs else 0) for i in range(procs)]
        children = [ctx.Process(target=_burn, args=(n, share, barrier), daemon=True) for share in shares]
        for child in children:
            child.start()
        barrier.wait(timeout=120)  # process start-up is not timed
        t0 = time.perf_counter()
        for child in children:
            child.join()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def bench_scaling(quick: bool) -> BenchResult:
    """The same CPU-bound batch on a 1-worker and a 2-worker server: speed-up against target and host ceiling.

    The host's vCPUs are noisy, so both servers stay up and the work is split into rounds that alternate
    1 worker, 2 workers and the bare-process ceiling; each figure sums its rounds.
    """
    size, parallel, target_ms, rounds = (80, 10, 25.0, 2) if quick else (200, 10, 30.0, 4)
    per_round = size // rounds
    ceiling_runs = max(2, per_round // 2)
    started = time.perf_counter()
    result = BenchResult("server.scaling")
    n = calibrate_loop(target_ms)
    served: dict[int, list[float]] = {1: [], 2: []}
    bare: dict[int, list[float]] = {1: [], 2: []}
    peaks: list[float | None] = []
    with contextlib.ExitStack() as stack:
        apis: dict[int, Api] = {}
        samplers: dict[int, TreeMemorySampler] = {}
        for workers in (1, 2):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mlserver-bench-"))
            server, samplers[workers] = stack.enter_context(
                running_server(Path(tmp) / "data", workers=workers)
            )
            apis[workers] = api = stack.enter_context(Api(server))
            api.publish(CPU, VERSION, CPU_CODE, {"n": "integer"}, {"y": "integer"})
            _run_batch(api, CPU, [{"n": 1000}] * (4 * workers), workers)  # load the service in every worker
        with HostLoad() as load:
            for round_ in range(rounds):
                one, two = host_ceiling(n, ceiling_runs)
                bare[1].append(one)
                bare[2].append(two)
                for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                    seconds, _, _ = _run_batch(apis[workers], CPU, [{"n": n}] * per_round, parallel)
                    served[workers].append(seconds)
        for workers in (1, 2):
            samplers[workers].sample()
            peaks.append(samplers[workers].peak_mib)
            result.notes.append(
                f"--workers {workers}: server tree peak {samplers[workers].peak_mib or 0:.0f} MiB"
            )
    total = {w: sum(served[w]) for w in served}
    speedup = total[1] / total[2]
    ceiling = sum(bare[1]) / sum(bare[2])
    rounds_speedup = [a / b for a, b in zip(served[1], served[2], strict=True)]
    rounds_ceiling = [a / b for a, b in zip(bare[1], bare[2], strict=True)]
    per_record = total[1] / (per_round * rounds) * 1000
    bare_per_record = sum(bare[1]) / (ceiling_runs * rounds) * 1000
    result.figures = [
        Figure("host ceiling: 2 bare procs vs 1", ceiling, "x", f"rounds {_spread(rounds_ceiling)}"),
        Figure("workers 1 (baseline)", per_round * rounds / total[1], "rec/s", f"{total[1]:.2f} s"),
        Figure("workers 2", per_round * rounds / total[2], "rec/s", f"{total[2]:.2f} s"),
        Figure(
            "speed-up workers 2 vs 1",
            speedup,
            "x",
            f"target >= {SPEEDUP_TARGET}; rounds {_spread(rounds_speedup)}; {speedup / ceiling:.0%} of ceiling",
            "PASS" if speedup >= SPEEDUP_TARGET else "MISS",
        ),
        Figure(
            "record cost, 1 worker", per_record, "ms", f"x{per_record / bare_per_record:.2f} vs bare process"
        ),
    ]
    result.notes.append(_load_note("whole measurement", load))
    result.notes.append(
        f"{per_round * rounds} records per server in {rounds} alternating rounds, parallelCount {parallel}, "
        f"loop n={n} (~{target_ms:g} ms calibrated in-process), {os.cpu_count()} cores"
    )
    return _finish(result, started, peaks)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"
