"""``server.batch_r``: batch throughput of a trivial R service (R embedded in the workers) vs the same Python one.

Both services (``y <- x`` and ``y = x``, one ``numeric`` in and out) are published on one 2-worker server and
run as batches at ``parallelCount`` 10 in alternating rounds, so that a shared host's drifts hit both alike.
The server tree's peak memory is sampled once after the Python rounds alone and again at the end (R loaded in
both workers): the difference is what embedding R costs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Api, BenchResult, Figure, HostLoad, client_peak_mib, running_server

VERSION = "1.0"
PARALLEL = 10
SERVICES = {"Python": ("identity_py", "y = x"), "R": ("identity_r", "y <- x")}


def _publish(api: Api, runtime: str) -> None:
    name, code = SERVICES[runtime]
    body = {
        "code": code,
        "runtimeType": runtime,
        "inputParameterDefinitions": [{"name": "x", "type": "numeric"}],
        "outputParameterDefinitions": [{"name": "y", "type": "numeric"}],
        "description": f"benchmark service {name}",
    }
    api.request("POST", f"/services/{name}/{VERSION}", json=body)


def _batch_seconds(api: Api, runtime: str, records: list[dict[str, Any]]) -> float:
    """Seconds from the POST that starts a batch to its state reaching Complete; checks every output."""
    name = SERVICES[runtime][0]
    started = time.perf_counter()
    execution_id = api.start_batch(name, VERSION, records, PARALLEL)
    status, _ = api.wait_finished(name, VERSION, execution_id)
    elapsed = time.perf_counter() - started
    if str(status["state"]).lower() != "complete":
        raise RuntimeError(f"the {runtime} batch did not complete: {status}")
    results = api.status(name, VERSION, execution_id, partial=True)["batchExecutionResults"]
    outputs = [r["outputParameters"].get("y") if r["success"] else r["errorMessage"] for r in results]
    if outputs != [r["x"] for r in records]:
        raise RuntimeError(f"the {runtime} batch answered wrongly, first results: {outputs[:3]}")
    return elapsed


def bench_batch_r(quick: bool) -> BenchResult:
    """Records/s of a trivial R service in batch (parallelCount 10, 2 workers) vs the same Python service."""
    size, rounds = (500, 2) if quick else (2000, 3)
    records = [{"x": float(i)} for i in range(size)]
    warmup = records[:40]
    started = time.perf_counter()
    result = BenchResult("server.batch_r")
    times: dict[str, list[float]] = {"Python": [], "R": []}
    with (
        tempfile.TemporaryDirectory(prefix="mlserver-bench-") as tmp,
        running_server(Path(tmp) / "data", workers=2) as (server, sampler),
        Api(server) as api,
    ):
        for runtime in SERVICES:
            _publish(api, runtime)
        _batch_seconds(api, "Python", warmup)
        times["Python"].append(_batch_seconds(api, "Python", records))
        sampler.sample()
        python_peak = sampler.peak_mib
        r_start = _batch_seconds(api, "R", warmup)  # starts R in the workers that take its records
        with HostLoad() as load:
            for i in range(rounds):
                order = ("R", "Python") if i % 2 == 0 else ("Python", "R")
                for runtime in order:
                    times[runtime].append(_batch_seconds(api, runtime, records))
        sampler.sample()
        peak = sampler.peak_mib
    rate = {runtime: size / statistics.median(seconds) for runtime, seconds in times.items()}
    result.figures = [
        Figure("R records/s", rate["R"], "rec/s", f"x{rate['R'] / rate['Python']:.2f} vs Python"),
        Figure("Python records/s (baseline)", rate["Python"], "rec/s"),
        Figure("R first batch (starts R)", r_start, "s", f"{len(warmup)} records"),
    ]
    if python_peak is not None and peak is not None:
        result.figures.append(Figure("server tree peak, Python only", python_peak, "MiB"))
        result.figures.append(
            Figure("server tree peak, R loaded", peak, "MiB", f"+{peak - python_peak:.0f} MiB")
        )
    result.notes.append(
        f"{size} records a batch at parallelCount {PARALLEL} on 2 workers; median of {rounds} rounds per runtime "
        "(alternating order), after a warm-up batch each"
    )
    result.notes.append(
        "R rounds: " + ", ".join(f"{s:.2f}" for s in times["R"]) + " s; Python rounds: "
        + ", ".join(f"{s:.2f}" for s in times["Python"]) + " s"
    )  # fmt: skip
    if load.foreign_cores is not None:
        result.notes.append(f"other processes kept {load.foreign_cores:.2f} cores busy during the rounds")
    result.server_peak_mib = peak
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result
