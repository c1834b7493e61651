"""``hook.start``: what one batch start costs on a service with a long history.

A start must never take another client's execution for its own (README, "Starting a batch: never twice, never
another's"). Against a server that honours idempotency keys (the local one) the hook sends the start with its key
and lists nothing; against one that ignores them (a real Machine Learning Server, played by the local server with
``--ignore-idempotency-keys``) it lists the service's executions once, just before the start. This benchmark
starts one 10-record batch through ``MLServerHook.start_batch`` on a service with 10,000 earlier executions (1,000
with ``--quick``) and on a fresh service with none (the baseline, same server, same run), both ways, and shows the
cost of the one listing of 10,000 ids on its own.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow_mlserver.server.process import LocalMLServer
from bench.common import Api, BenchResult, Figure, TreeMemorySampler, client_peak_mib
from bench.hook import _hook

VERSION = "1.0"
CODE = "y = x"
STARTS = 20  # starts measured per case (the median counts)
TARGET = (
    1.5  # keys honoured: a start with a long history / one with none (bounded, not growing with the history)
)
LISTINGS = 1.5  # keys ignored: what the history adds to a start, in listings of it (once, never twice)


def _history(api: Api, name: str, count: int) -> None:
    """``count`` earlier executions of one record each, started over one keep-alive session, and finished (so
    that the server is idle again when the starts are timed)."""
    last = ""
    for i in range(count):
        last = api.start_batch(name, VERSION, [{"x": float(i)}], 1)
    api.wait_finished(name, VERSION, last, poll=0.2, timeout=600.0)


def _start_ms(hook: Any, name: str) -> float:
    """Median milliseconds of one ``start_batch`` of 10 records."""
    times = []
    for _ in range(STARTS):
        began = time.perf_counter()
        hook.start_batch(name, VERSION, [{"x": float(i)} for i in range(10)], parallel_count=2)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _case(data: Path, extra: list[str], history: int, first: bool) -> tuple[dict[str, float], float | None]:
    """Start, on a server over ``data``, through the hook on a service with ``history`` executions and on one
    with none; answer the medians (ms) and the listing's time, and the server tree's peak."""
    with (
        LocalMLServer(data, workers=2, extra_args=extra) as server,
        Api(server) as api,
        TreeMemorySampler(server.proc.pid) as sampler,
    ):
        if first:
            for name in ("long", "fresh"):
                api.publish(name, VERSION, CODE, {"x": "numeric"}, {"y": "numeric"})
            _history(api, "long", history)
        hook = _hook(server)
        try:
            hook.get_conn().calls.honours_keys()  # what the process knows is asked, as a task's first call does
            figures = {"fresh": _start_ms(hook, "fresh"), "long": _start_ms(hook, "long")}
            began = time.perf_counter()
            hook.list_batch_executions("long", VERSION)
            figures["list"] = (time.perf_counter() - began) * 1000
        finally:
            hook.close()
        sampler.sample()
        return figures, sampler.peak_mib


def bench_starts(quick: bool) -> BenchResult:
    """A start on a service with 10,000 earlier executions vs one with none, keys honoured and ignored."""
    history = 1_000 if quick else 10_000
    started = time.perf_counter()
    result = BenchResult("hook.start")
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-starts-") as tmp:
        cases = {}
        for label, extra in (("keys honoured", []), ("keys ignored", ["--ignore-idempotency-keys"])):
            cases[label], peak = _case(Path(tmp), extra, history, first=not cases)
            peaks += [peak] if peak is not None else []
    keyed, ignored = cases["keys honoured"], cases["keys ignored"]
    ratio = keyed["long"] / keyed["fresh"]
    result.figures.append(Figure("keys honoured: start, no history", keyed["fresh"], "ms"))
    result.figures.append(
        Figure(
            f"keys honoured: start, {history:,} earlier", keyed["long"], "ms", f"x{ratio:.2f} vs no history",
            "PASS" if ratio <= TARGET else "MISS",
        )
    )  # fmt: skip
    listings = (ignored["long"] - ignored["fresh"]) / ignored["list"]
    result.figures.append(Figure("keys ignored: start, no history", ignored["fresh"], "ms"))
    result.figures.append(
        Figure(
            f"keys ignored: start, {history:,} earlier", ignored["long"], "ms",
            f"the history adds {listings:.2f} listings of it (target <= {LISTINGS:g}: listed once)",
            "PASS" if listings <= LISTINGS else "MISS",
        )
    )  # fmt: skip
    result.figures.append(Figure(f"one listing of {history:,} ids", cases["keys ignored"]["list"], "ms"))
    result.notes.append(
        f"median of {STARTS} starts of 10 records each (hook.start_batch: check, encode, send; parallelCount 2); "
        f"the history: {history:,} finished executions of one record on the same service; keys honoured list "
        f"nothing (target: at most x{TARGET:g} the start without history), keys ignored list the executions once "
        "before the start (the contract has no other way to see what a lost start created)"
    )
    result.server_peak_mib = max(peaks) if peaks else None
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result
