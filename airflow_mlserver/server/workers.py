"""A pool of worker processes that run service code, with a per-execution (per-record) timeout.

Processes, not threads: scoring is CPU-bound and must use every core. Each worker answers one job, or one
group of batch records, at a time over a pipe; the server waits for it in a thread so the event loop stays
free, one thread hop per group rather than per record. A group's records answer one by one as they finish,
so the timeout holds for each record: a worker that runs past it, or dies, is killed and replaced, the record
it was running fails, and the records of the group it had not reached go back to the caller, unrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from airflow_mlserver.server.runtime import (
    Group,
    GroupEnd,
    GroupRecord,
    Job,
    Outcome,
    RecordDone,
    answer_text,
    worker_main,
)

_DIED = "the worker process running this execution died"


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    stop: (
        Any  # a shared byte (multiprocessing RawValue): set, the worker ends its group before the next record
    )


@dataclass
class GroupRun:
    """What came of a group: the records that ran (or failed on a timeout or a dead worker), those left unrun.

    ``init_error`` is set when the service could not be loaded (no record of the group ran); ``seconds`` is
    the time the worker spent on the group.
    """

    done: list[RecordDone] = field(default_factory=list)
    unrun: list[GroupRecord] = field(default_factory=list)
    init_error: str = ""
    seconds: float = 0.0


class _Timeout(Exception):
    pass


class WorkerPool:
    """``size`` worker processes; :meth:`run` sends a job, :meth:`run_group` a group, to the next free one."""

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
        stop = self._ctx.RawValue("b", 0)
        process = self._ctx.Process(target=worker_main, args=(child, self.home, stop), daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent, stop)
        self._all.append(worker)
        return worker

    async def start(self) -> None:
        shutil.rmtree(Path(self.home) / "workers", ignore_errors=True)  # scratch folders of a previous run
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

    def _timeout_message(self) -> str:
        return f"the execution ran longer than the server's execution timeout ({self.timeout:g} s)"

    async def run(self, job: Job, on_start: Callable[[], None] | None = None) -> Outcome:
        """Run one execution on a free worker; never raises for what the service code does.

        ``on_start`` is called once a worker has taken the job.
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
            return Outcome(success=False, error_message=self._timeout_message())
        except (EOFError, OSError):
            worker = await loop.run_in_executor(self._threads, self._replace, worker)
            return Outcome(success=False, error_message=_DIED)
        finally:
            self.busy -= 1
            self._idle.put_nowait(worker)

    async def run_group(
        self, take: Callable[[], Group | None], should_stop: Callable[[], bool]
    ) -> GroupRun | None:
        """Run a group on the next free worker; None when ``take`` has nothing left to give.

        ``take`` is called once a worker is free, so the group is formed as late as possible (a cancel or a
        resized group counts until then). ``should_stop`` is asked after each record: true, the worker stops
        before its next record and the rest of the group comes back unrun.
        """
        worker = await self._idle.get()
        try:
            group = take()
        except BaseException:
            self._idle.put_nowait(worker)
            raise
        if group is None:
            self._idle.put_nowait(worker)
            return None
        self.busy += 1
        box = [worker]
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._threads, self._call_group, box, group, should_stop
            )
        finally:
            self.busy -= 1
            self._idle.put_nowait(box[0])

    def _call_group(self, box: list[_Worker], group: Group, should_stop: Callable[[], bool]) -> GroupRun:
        """In a thread: send ``group`` to ``box[0]`` and collect its records; a replaced worker goes in ``box``."""
        worker = box[0]
        records = group.records
        run = GroupRun()
        started = time.perf_counter()
        failure = ""
        try:
            worker.stop.value = 0
            worker.conn.send(group)
            while True:
                if not worker.conn.poll(self.timeout):
                    failure = self._timeout_message()
                    break
                message = worker.conn.recv()
                if isinstance(message, GroupEnd):
                    run.unrun = records[len(run.done) :]
                    run.seconds = time.perf_counter() - started
                    return run
                if message.init_error:
                    run.init_error = message.init_error  # the worker ends the group (GroupEnd) right after
                    continue
                run.done.append(message)
                if not worker.stop.value and should_stop():
                    worker.stop.value = 1
        except (EOFError, OSError):
            failure = _DIED
        position = len(run.done)
        run.seconds = time.perf_counter() - started
        if self.closing:
            run.unrun = records[position:]  # shutting down: these records run again after a restart
            return run
        box[0] = self._replace(worker)
        if position < len(records):  # the record that was running when the worker timed out or died
            failed = Outcome(success=False, error_message=failure)
            run.done.append(RecordDone(records[position].record_index, False, answer_text(failed)))
            run.unrun = records[position + 1 :]
        return run

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
