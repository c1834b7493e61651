"""Shared pieces of the benchmarks: result types, a raw-HTTP client, memory sampling, statistics."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from airflow_mlserver.server.process import LocalMLServer

FINISHED_STATES = ("complete", "failed", "canceled")


# -- results ------------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured number, with its comparison against a baseline of the same run when one applies."""

    name: str
    value: float
    unit: str
    versus: str = ""  # e.g. "x4.2 vs parallelCount 1"
    verdict: str = ""  # PASS / MISS when the figure has a target


@dataclass
class BenchResult:
    """What one benchmark reports: its figures, peak memory (server tree and client) and wall time."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    server_peak_mib: float | None = None
    client_peak_mib: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str = ""


Benchmark = Callable[[bool], BenchResult]


def client_peak_mib() -> float:
    """Peak RSS of this process so far: its own ``VmHWM`` on Linux.

    ``ru_maxrss`` is not used where /proc is: it survives ``exec``, so a child process started by a large
    parent reports the parent's peak. Elsewhere it is the fallback (KiB on Linux, bytes on macOS).
    """
    reading = _status_kib(os.getpid())
    if reading is not None and reading[0]:
        return reading[0] / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def quiet_request_logs() -> None:
    """Keep in-process test servers (moto's, on werkzeug) from logging every request into the benchmark output."""
    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.WARNING)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- CPU used by other processes on the host (the benchmarks share the machine) -----------------------
def _system_busy_ticks() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _own_ticks() -> int:
    """CPU ticks of this process, every live descendant (servers, workers) and every reaped child."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = round((reaped.ru_utime + reaped.ru_stime) * os.sysconf("SC_CLK_TCK"))
    for pid in _descendants(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])  # utime, stime
    return total


class HostLoad:
    """Average number of cores that processes other than this benchmark kept busy during a ``with`` block.

    A shared or noisy host makes scaling figures meaningless; this says how much of the machine was taken.
    ``foreign_cores`` is None where /proc is not available. Children joined inside the block count as ours;
    grandchildren that exit inside it (a server's workers) would count as foreign, so keep servers alive
    across the block.
    """

    def __init__(self) -> None:
        self.foreign_cores: float | None = None
        self._start: tuple[float, int, int] | None = None

    def __enter__(self) -> HostLoad:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self._start = (time.perf_counter(), _system_busy_ticks(), _own_ticks())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._start is None:
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            wall = time.perf_counter() - self._start[0]
            busy = _system_busy_ticks() - self._start[1]
            own = _own_ticks() - self._start[2]
            self.foreign_cores = (
                max(0.0, (busy - own) / os.sysconf("SC_CLK_TCK") / wall) if wall > 0 else None
            )


# -- memory of the server process tree ----------------------------------------------------------------
def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may contain spaces: split after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(root: int) -> list[int]:
    children = _proc_children()
    found, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_kib(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of a process in KiB, from /proc/<pid>/status; None if it is gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except OSError:
        return None
    return hwm, rss


class TreeMemorySampler:
    """Samples the peak RSS of a process and all its descendants (the server and its workers).

    On Linux it reads ``/proc/<pid>/status`` every ``interval`` seconds: ``peak_mib`` is the sum of each
    process's own high-water mark (VmHWM, so short peaks between samples still count), ``peak_concurrent_mib``
    the highest sampled sum of current RSS. Elsewhere it falls back to psutil (current RSS only) if installed.
    Call :meth:`sample` once more just before stopping the server: a process's VmHWM is lost when it exits.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self._hwm_kib: dict[int, int] = {}
        self._concurrent_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-memory")
        self._lock = threading.Lock()
        self.available = os.path.isdir("/proc/self") or _psutil() is not None

    def sample(self) -> None:
        if os.path.isdir("/proc/self"):
            readings = {pid: _status_kib(pid) for pid in _descendants(self.pid)}
        else:
            readings = _psutil_readings(self.pid)
        with self._lock:
            total = 0
            for pid, reading in readings.items():
                if reading is None:
                    continue
                hwm, rss = reading
                self._hwm_kib[pid] = max(self._hwm_kib.get(pid, 0), hwm)
                total += rss
            self._concurrent_kib = max(self._concurrent_kib, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a process exiting mid-read is not an error
                self.sample()

    @property
    def peak_mib(self) -> float | None:
        if not self.available:
            return None
        with self._lock:
            return sum(self._hwm_kib.values()) / 1024

    @property
    def peak_concurrent_mib(self) -> float | None:
        if not self.available:
            return None
        with self._lock:
            return self._concurrent_kib / 1024

    @property
    def processes(self) -> int:
        with self._lock:
            return len(self._hwm_kib)

    def __enter__(self) -> TreeMemorySampler:
        if self.available:
            self.sample()
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self.available:
            with contextlib.suppress(Exception):
                self.sample()


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _psutil_readings(pid: int) -> dict[int, tuple[int, int] | None]:
    psutil = _psutil()
    if psutil is None:
        return {}
    readings: dict[int, tuple[int, int] | None] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                rss = process.memory_info().rss // 1024
            except psutil.Error:
                continue
            readings[process.pid] = (rss, rss)
    return readings


@contextlib.contextmanager
def running_server(
    data_dir: Path, workers: int, extra_args: list[str] | None = None
) -> Iterator[tuple[LocalMLServer, TreeMemorySampler]]:
    """A local server with a memory sampler on its process tree; both are stopped on exit."""
    with LocalMLServer(data_dir, workers=workers, extra_args=extra_args) as server:
        assert server.proc is not None
        with TreeMemorySampler(server.proc.pid) as sampler:
            yield server, sampler


# -- a small raw-HTTP client --------------------------------------------------------------------------
class Api:
    """A logged-in keep-alive ``requests.Session`` against a local server; paths are relative to its URL."""

    def __init__(self, server: LocalMLServer) -> None:
        self.url = server.url
        self.session = requests.Session()
        answer = self.session.post(
            f"{self.url}/login", json={"username": server.username, "password": server.password}, timeout=30
        )
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        answer = self.session.request(method, f"{self.url}{path}", **kwargs)
        if answer.status_code >= 300:
            raise RuntimeError(f"{method} {path} answered {answer.status_code}: {answer.text[:500]}")
        return answer

    def publish(
        self, name: str, version: str, code: str, inputs: dict[str, str], outputs: dict[str, str]
    ) -> None:
        body = {
            "code": code,
            "runtimeType": "Python",
            "inputParameterDefinitions": [{"name": k, "type": v} for k, v in inputs.items()],
            "outputParameterDefinitions": [{"name": k, "type": v} for k, v in outputs.items()],
            "outputFileNames": [],
            "description": f"benchmark service {name}",
        }
        self.request("POST", f"/services/{name}/{version}", json=body)

    def consume(self, name: str, version: str, inputs: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/api/{name}/{version}", json=inputs).json()
        if not result.get("success"):
            raise RuntimeError(f"{name}/{version} failed: {result.get('errorMessage')}")
        return result

    def start_batch(self, name: str, version: str, records: list[dict[str, Any]], parallel: int) -> str:
        answer = self.request("POST", f"/api/{name}/{version}/batch?parallelCount={parallel}", json=records)
        execution_id: str = answer.json()["batchExecutionId"]
        return execution_id

    def status(self, name: str, version: str, execution_id: str, partial: bool) -> dict[str, Any]:
        flag = "true" if partial else "false"
        path = f"/api/{name}/{version}/batch/{execution_id}?showPartialResults={flag}"
        status: dict[str, Any] = self.request("GET", path).json()
        return status

    def wait_finished(
        self, name: str, version: str, execution_id: str, poll: float = 0.05, timeout: float = 300.0
    ) -> tuple[dict[str, Any], int]:
        """Poll state only (``showPartialResults=false``) until finished; answer the last status and poll count."""
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            status = self.status(name, version, execution_id, partial=False)
            polls += 1
            if str(status["state"]).lower() in FINISHED_STATES:
                return status, polls
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} not finished after {timeout:g} s: {status}")
            time.sleep(poll)


class ExecutionWatcher:
    """Watches, from the benchmark's process, the executions a task starts on one service: when each was first
    listed and when it ended, in epoch seconds (polls every ``interval``; the server keeps no timestamps).

    Executions in ``known`` (there before the task) are not watched. Use it as a context manager.
    """

    def __init__(self, api: Api, name: str, version: str, known: set[str], interval: float = 0.05) -> None:
        self.api, self.name, self.version, self.known = api, name, version, set(known)
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-executions")

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                now = time.time()
                for execution_id in self.api.request("GET", f"/api/{self.name}/{self.version}/batch").json():
                    if execution_id not in self.known and execution_id not in self.seen:
                        self.seen[execution_id] = now
                for execution_id in [e for e in self.seen if e not in self.done]:
                    status = self.api.status(self.name, self.version, execution_id, partial=False)
                    if str(status["state"]).lower() in ("complete", "failed", "canceled"):
                        self.done[execution_id] = time.time()
            time.sleep(self.interval)

    def __enter__(self) -> ExecutionWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- a process tree's memory and CPU, read once ----------------------------------------------------------
def tree_memory_mib(pid: int) -> tuple[float, float, int]:
    """(sum of VmHWM, sum of VmRSS, processes) over a process and its live descendants, in MiB, read now."""
    hwm = rss = count = 0
    for member in _descendants(pid):
        reading = _status_kib(member)
        if reading is not None:
            hwm, rss, count = hwm + reading[0], rss + reading[1], count + 1
    return hwm / 1024, rss / 1024, count


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and each of its live descendants, by pid (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    for member in _descendants(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[member] = (int(stat[11]) + int(stat[12])) / ticks  # utime, stime
    return seconds
