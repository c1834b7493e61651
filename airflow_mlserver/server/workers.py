"""A pool of worker processes that run service code, with a per-execution timeout.

Processes, not threads: scoring is CPU-bound and must use every core. Each worker answers one job at a
time over a pipe; the server waits for it in a thread so the event loop stays free. A worker that runs
past the timeout, or dies, is killed and replaced, and its job answers as a failed execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from airflow_mlserver.server.runtime import Job, Outcome, worker_main


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection


class _Timeout(Exception):
    pass


class WorkerPool:
    """``size`` worker processes; :meth:`run` sends a job to the next free one."""

    def __init__(self, size: int, timeout: float, home: str | None = None) -> None:
        self.size = max(1, size)
        self.timeout = timeout
        self.home = home or tempfile.gettempdir()
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._threads = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="mlserver-worker")
        self._all: list[_Worker] = []
        self.busy = 0
        self.closing = False

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=worker_main, args=(child, self.home), daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._all.append(worker)
        return worker

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._idle.put_nowait(await loop.run_in_executor(self._threads, self._spawn))

    def _call(self, worker: _Worker, job: Job, timeout: float) -> Outcome:
        worker.conn.send(job)
        if not worker.conn.poll(timeout):
            raise _Timeout
        outcome: Outcome = worker.conn.recv()
        return outcome

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.join(5)
        worker.conn.close()
        if worker in self._all:
            self._all.remove(worker)
        return self._spawn()

    async def run(self, job: Job, on_start: Callable[[], None] | None = None) -> Outcome:
        """Run one execution on a free worker; never raises for what the service code does.

        ``on_start`` is called once a worker has taken the job (a batch execution is ``Pending`` until then).
        """
        worker = await self._idle.get()
        if on_start is not None:
            on_start()
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self._threads, self._call, worker, job, self.timeout)
        except _Timeout:
            worker = await loop.run_in_executor(self._threads, self._replace, worker)
            error = f"the execution ran longer than the server's execution timeout ({self.timeout:g} s)"
            return Outcome(success=False, error_message=error)
        except (EOFError, OSError):
            worker = await loop.run_in_executor(self._threads, self._replace, worker)
            return Outcome(success=False, error_message="the worker process running this execution died")
        finally:
            self.busy -= 1
            self._idle.put_nowait(worker)

    def close(self) -> None:
        self.closing = True
        for worker in self._all:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self._all:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        self._threads.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> int:
        return sum(1 for w in self._all if w.process.is_alive())
