"""Benchmarks of the hook (``MLServerHook``) against the local server.

* ``hook.poll``: bytes read and time per status poll (``get_batch(partial=False)``) on running and on
  finished executions of 10 to 100,000 records; must not grow with the batch size.
* ``hook.results``: fetching and decoding every result of a 100,000-record execution with
  ``iter_batch_results``, against Microsoft's Python client on the same server, each side in its own process
  (target: the hook at least 3x faster); and the hook's memory growth on the 10,000-record execution too
  (target: no larger, within a few MiB, on ten times the records).

Both use the same finished executions, made once per run (see :func:`_prepared`): the 100,000-record batch
alone takes about a minute to run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow_mlserver.server.process import LocalMLServer
from bench.common import Api, BenchResult, Figure, TreeMemorySampler, client_peak_mib

VERSION = "1.0"
IDENTITY = "identity"
IDENTITY_CODE = "y = x"
SLEEPY = "sleepy"
SLEEPY_CODE = "import time\ntime.sleep(5)\ny = x"
CONN_ID = "bench_hook"
FLAT_TARGET = 1.5  # largest / smallest batch, per poll: above this the poll cost grows with the batch
RESULTS_TARGET = 3.0  # MS client time / hook time for all results of the largest batch
GROWTH_SLACK_MIB = 4.0  # the hook's memory growth on the largest batch may exceed the middle one's by this
RESULTS_ORDER = ("hook", "msclient", "msclient", "hook")  # each side twice, alternating: the best time counts
POLLS = 30
POLL_BUDGET_S = 6.0  # at most this long per (size, state), whatever POLLS says
SIDE_TIMEOUT_S = 240.0


def _sizes(quick: bool) -> tuple[int, int, int]:
    return (10, 1_000, 10_000) if quick else (10, 10_000, 100_000)


@dataclass
class _Prepared:
    """A data directory holding the identity service and one finished batch execution per size."""

    tmp: tempfile.TemporaryDirectory[str]
    password: str
    finished: dict[int, str] = field(default_factory=dict)  # size -> execution id
    batch_seconds: dict[int, float] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.tmp.name) / "data"


_PREPARED: dict[bool, _Prepared] = {}


@contextlib.contextmanager
def _serve(prep: _Prepared) -> Iterator[tuple[LocalMLServer, TreeMemorySampler]]:
    with LocalMLServer(prep.data_dir, workers=2, password=prep.password) as server:
        assert server.proc is not None
        with TreeMemorySampler(server.proc.pid) as sampler:
            yield server, sampler


def _prepared(quick: bool) -> _Prepared:
    """Run the finished executions once per run and keep their data directory until the process exits."""
    if quick in _PREPARED:
        return _PREPARED[quick]
    tmp = tempfile.TemporaryDirectory(prefix="mlserver-bench-hook-")
    atexit.register(tmp.cleanup)
    prep = _Prepared(tmp, secrets.token_urlsafe(12))
    with _serve(prep) as (server, _), Api(server) as api:
        api.publish(IDENTITY, VERSION, IDENTITY_CODE, {"x": "numeric"}, {"y": "numeric"})
        api.publish(SLEEPY, VERSION, SLEEPY_CODE, {"x": "numeric"}, {"y": "numeric"})
        for size in _sizes(quick):
            t0 = time.perf_counter()
            execution_id = api.start_batch(IDENTITY, VERSION, [{"x": float(i)} for i in range(size)], 10)
            status, _ = api.wait_finished(IDENTITY, VERSION, execution_id, poll=0.5, timeout=600)
            if str(status["state"]).lower() != "complete" or status.get("failedItemCount"):
                raise RuntimeError(f"batch of {size} records did not complete cleanly: {status}")
            prep.finished[size] = execution_id
            prep.batch_seconds[size] = time.perf_counter() - t0
    _PREPARED[quick] = prep
    return prep


def _hook(server: LocalMLServer) -> Any:
    from airflow_mlserver.hooks.mlserver import MLServerHook

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = (
        f"mlserver://{server.username}:{quote(server.password, safe='')}@127.0.0.1:{server.port}"
    )
    return MLServerHook(CONN_ID)


def _finish(result: BenchResult, started: float, peak: float | None) -> BenchResult:
    result.server_peak_mib = peak
    result.client_peak_mib = client_peak_mib()
    result.seconds = time.perf_counter() - started
    return result


def _measure_polls(hook: Any, name: str, execution_id: str, finished: bool) -> tuple[float, float, int]:
    """Bytes and milliseconds per ``get_batch(partial=False)``, after two warm-up polls; and the poll count."""
    for _ in range(2):
        hook.get_batch(name, VERSION, execution_id, partial=False)
    before = hook.bytes_received
    polls = 0
    t0 = time.perf_counter()
    while polls < POLLS and (polls < 3 or time.perf_counter() - t0 < POLL_BUDGET_S):
        status = hook.get_batch(name, VERSION, execution_id, partial=False)
        polls += 1
        if status.is_finished != finished:
            raise RuntimeError(f"execution {execution_id} is {status.state}, expected finished={finished}")
        if status.results is not None:
            raise RuntimeError("a partial=False poll decoded the results list")
    seconds = time.perf_counter() - t0
    return (hook.bytes_received - before) / polls, seconds * 1000 / polls, polls


def _full_answer_bytes(api: Api, name: str, execution_id: str) -> str:
    """Size of the whole answer to a ``showPartialResults=false`` poll (what a reader without early stop reads)."""
    path = f"/api/{name}/{VERSION}/batch/{execution_id}?showPartialResults=false"
    with api.session.get(f"{api.url}{path}", stream=True, timeout=120) as answer:
        total = sum(len(chunk) for chunk in answer.iter_content(1 << 16))
    return f"{total:,} bytes"


# -- (1) status polls -------------------------------------------------------------------------------------
def bench_poll(quick: bool) -> BenchResult:
    """Bytes and ms per ``get_batch(partial=False)`` on running and finished batches of 10 to 100,000 records."""
    sizes = _sizes(quick)
    started = time.perf_counter()
    result = BenchResult("hook.poll")
    prep = _prepared(quick)
    table: dict[tuple[str, int], tuple[float, float, int]] = {}
    running: dict[int, str] = {}
    with _serve(prep) as (server, sampler), Api(server) as api:
        hook = _hook(server)
        try:
            for size in sizes:
                table["finished", size] = _measure_polls(hook, IDENTITY, prep.finished[size], finished=True)
            # The sleepy service takes 5 s a record at parallelCount 1: these stay running while measured.
            for size in sizes:
                running[size] = api.start_batch(SLEEPY, VERSION, [{"x": float(i)} for i in range(size)], 1)
            for size in sizes:
                table["running", size] = _measure_polls(hook, SLEEPY, running[size], finished=False)
            full = _full_answer_bytes(api, IDENTITY, prep.finished[sizes[-1]])
            for execution_id in running.values():
                hook.cancel_batch(SLEEPY, VERSION, execution_id)
        finally:
            hook.close()
        sampler.sample()
        peak = sampler.peak_mib
    for state in ("finished", "running"):
        for size in sizes:
            per_bytes, per_ms, _polls = table[state, size]
            result.figures.append(Figure(f"{state}, {size:,} rec: bytes/poll", per_bytes, "B"))
            result.figures.append(Figure(f"{state}, {size:,} rec: ms/poll", per_ms, "ms"))
        small, large = table[state, sizes[0]], table[state, sizes[-1]]
        for i, what in ((0, "bytes"), (1, "time")):
            ratio = large[i] / small[i] if small[i] else float("nan")
            result.figures.append(
                Figure(
                    f"{state}: {what} {sizes[-1]:,} / {sizes[0]:,}",
                    ratio,
                    "x",
                    f"target <= {FLAT_TARGET:g}",
                    "PASS" if ratio <= FLAT_TARGET else "MISS",
                )
            )
    result.notes.append(
        f"polls per (state, size): {', '.join(f'{s} {n:,}: {table[s, n][2]}' for s, n in table)}"
        f" (up to {POLLS}, at most {POLL_BUDGET_S:g} s each, after 2 warm-up polls)"
    )
    result.notes.append(
        f"the whole answer to one poll of the finished {sizes[-1]:,}-record execution is {full} "
        "(the hook stops reading after the head fields)"
    )
    result.notes.append(
        "finished batches (identity service, parallelCount 10) ran in "
        + ", ".join(f"{n:,}: {s:.1f} s" for n, s in prep.batch_seconds.items())
        + " (made once, shared with hook.results)"
    )
    return _finish(result, started, peak)


# -- (2) full results: hook vs Microsoft's client ---------------------------------------------------------
def _side(which: str, server: LocalMLServer, execution_id: str, expected: int) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.hook_side", which, server.url, server.password,
        IDENTITY, VERSION, execution_id, str(expected),
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=SIDE_TIMEOUT_S, cwd=root, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{which} side failed ({done.returncode}): {done.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if answer.get("error"):
        raise RuntimeError(f"{which} side: {answer['error']}")
    return answer


def bench_results(quick: bool) -> BenchResult:
    """Fetch and decode all results of the largest batch: ``iter_batch_results`` vs Microsoft's client."""
    sizes = _sizes(quick)
    size, smaller = sizes[-1], sizes[-2]
    started = time.perf_counter()
    result = BenchResult("hook.results")
    prep = _prepared(quick)
    with _serve(prep) as (server, sampler):
        execution_id = prep.finished[size]
        runs = [(which, _side(which, server, execution_id, size)) for which in RESULTS_ORDER]
        hook_small = _side("hook", server, prep.finished[smaller], smaller)
        sampler.sample()
        peak = sampler.peak_mib
    times = {which: [run["seconds"] for w, run in runs if w == which] for which in set(RESULTS_ORDER)}
    hook_side = min((run for w, run in runs if w == "hook"), key=lambda run: run["seconds"])
    ms_side = min((run for w, run in runs if w == "msclient"), key=lambda run: run["seconds"])
    if len({run["checksum"] for _, run in runs}) != 1:
        raise RuntimeError(f"the two sides decoded different outputs: {hook_side} vs {ms_side}")
    hook_s, ms_s = hook_side["seconds"], ms_side["seconds"]
    hook_grow = hook_side["peak_mib"] - hook_side["base_mib"]
    small_grow = hook_small["peak_mib"] - hook_small["base_mib"]
    ms_grow = ms_side["peak_mib"] - ms_side["base_mib"]
    speedup = ms_s / hook_s
    flat = hook_grow <= small_grow + GROWTH_SLACK_MIB
    result.figures = [
        Figure(f"hook, {size:,} results", hook_s, "s", f"{size / hook_s:,.0f} rec/s"),
        Figure(f"MS client, {size:,} results", ms_s, "s", f"{size / ms_s:,.0f} rec/s"),
        Figure(
            "MS client time / hook time",
            speedup,
            "x",
            f"target >= {RESULTS_TARGET:g}",
            "PASS" if speedup >= RESULTS_TARGET else "MISS",
        ),
        Figure("hook process peak RSS", hook_side["peak_mib"], "MiB", f"+{hook_grow:,.1f} MiB during fetch"),
        Figure(
            f"hook growth, {smaller:,} -> {size:,} results",
            hook_grow - small_grow,
            "MiB",
            f"+{small_grow:,.1f} -> +{hook_grow:,.1f} MiB; target <= {GROWTH_SLACK_MIB:g}",
            "PASS" if flat else "MISS",
        ),
        Figure("MS client process peak RSS", ms_side["peak_mib"], "MiB", f"+{ms_grow:,.1f} MiB during fetch"),
    ]
    result.notes.append(
        "each side runs in its own process (python -m bench.hook_side), one after the other, in the order "
        f"{', '.join(RESULTS_ORDER)}; the best time of each counts (hook "
        f"{', '.join(f'{t:.2f}' for t in times['hook'])} s; MS client "
        f"{', '.join(f'{t:.2f}' for t in times['msclient'])} s); timed: hook "
        "iter_batch_results; MS client svc.get_batch + batch.results() + execution(i).outputs for every i; "
        f"the hook also reads the {smaller:,}-record execution ({hook_small['seconds']:.2f} s), for its memory"
    )
    result.notes.append(
        "peak RSS = VmHWM of that process (Linux); '+' = growth from after imports and login to the end"
    )
    return _finish(result, started, peak)


# -- (3) the CPU of one async status poll -------------------------------------------------------------------
CPU_POLLS = 400
CPU_SIZES = (10, 1_000)


async def _cpu_per_call(call: Any, polls: int) -> float:
    """CPU microseconds of this process per ``await call()``, after 20 warm-up calls."""
    for _ in range(20):
        await call()
    cpu = time.process_time()
    for _ in range(polls):
        await call()
    return (time.process_time() - cpu) * 1e6 / polls


def bench_poll_cpu(quick: bool) -> BenchResult:
    """CPU per async status poll as triggers do it (the shared hook's ``async_get_batch``), against a bare aiohttp
    GET of the same URL with its headers built once and its answer parsed with ``json.loads`` (the baseline)."""
    import asyncio

    import aiohttp

    from airflow_mlserver.hooks.shared import shared_hook

    started = time.perf_counter()
    result = BenchResult("hook.poll_cpu")
    polls = CPU_POLLS // 4 if quick else CPU_POLLS
    with tempfile.TemporaryDirectory(prefix="mlserver-bench-cpu-") as tmp:
        server = LocalMLServer(Path(tmp), workers=2, password=secrets.token_urlsafe(12))
        with server, Api(server) as api:
            api.publish(IDENTITY, VERSION, IDENTITY_CODE, {"x": "numeric"}, {"y": "numeric"})
            finished = {}
            for size in CPU_SIZES:
                execution_id = api.start_batch(IDENTITY, VERSION, [{"x": float(i)} for i in range(size)], 10)
                api.wait_finished(IDENTITY, VERSION, execution_id, poll=0.2, timeout=300)
                finished[size] = execution_id
            _hook(server)  # the connection
            token = str(api.session.headers["Authorization"])

            async def measure() -> dict[tuple[str, int], float]:
                figures: dict[tuple[str, int], float] = {}
                headers = {"Accept": "application/json", "Authorization": token}
                async with aiohttp.ClientSession(headers=headers) as session:
                    for size, execution_id in finished.items():
                        url = f"{server.url}/api/{IDENTITY}/{VERSION}/batch/{execution_id}"

                        async def bare(url: str = url) -> None:
                            async with session.get(url, params={"showPartialResults": "false"}) as answer:
                                json.loads(await answer.read())

                        figures["bare", size] = await _cpu_per_call(bare, polls)
                async with shared_hook(CONN_ID) as hook:
                    for size, execution_id in finished.items():

                        async def poll(execution_id: str = execution_id) -> None:
                            await hook.async_get_batch(IDENTITY, VERSION, execution_id)

                        figures["hook", size] = await _cpu_per_call(poll, polls)
                return figures

            table = asyncio.run(measure())
    for size in CPU_SIZES:
        bare, hook = table["bare", size], table["hook", size]
        result.figures.append(Figure(f"bare aiohttp GET + json, {size:,} rec", bare, "µs CPU"))
        result.figures.append(
            Figure(
                f"hook async_get_batch, {size:,} rec", hook, "µs CPU", f"x{hook / bare:.2f} vs bare aiohttp"
            )
        )
    small, large = table["hook", CPU_SIZES[0]], table["hook", CPU_SIZES[-1]]
    ratio = large / small
    result.figures.append(
        Figure(
            f"hook: {CPU_SIZES[-1]:,} / {CPU_SIZES[0]:,} rec",
            ratio,
            "x",
            f"target <= {FLAT_TARGET:g}",
            "PASS" if ratio <= FLAT_TARGET else "MISS",
        )
    )
    result.notes.append(
        f"{polls} sequential polls of a finished execution per figure after 20 warm-up ones, one event loop; CPU = "
        "time.process_time() of this process (the server's CPU is not counted)"
    )
    return _finish(result, started, None)
