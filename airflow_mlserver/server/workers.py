"""A pool of worker processes that run service code, with a per-execution (per-record) timeout.

Processes, not threads: scoring is CPU-bound and must use every core. Each worker answers one job, or one
group of batch records, at a time over a pipe; the server waits for it in a thread so the event loop stays
free, one thread hop and one answer per group rather than per record. The worker says which record of the
group it is running in a shared number (``runtimes.protocol.Flags``), so the timeout holds for each record: a worker
that runs past it, or dies, is killed and replaced, the record it was running fails, and the group's other
records without a result (those not reached, and those whose results died with the worker) go back to the
caller, unrun. While a group runs, its thread wakes every :data:`WATCH_SECONDS` to time the running record
and to pass a stop on to the worker, which reads it before each record.
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

from airflow_mlserver.server.runtimes.protocol import (
    Flags,
    Group,
    GroupDone,
    GroupRecord,
    Job,
    Outcome,
    RecordDone,
    answer_text,
)
from airflow_mlserver.server.runtimes.worker import worker_main

_DIED = "the worker process running this execution died"
#: How often a group's thread looks at the record running and at the stop request.
WATCH_SECONDS = 0.02


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    flags: Flags


@dataclass
class GroupRun:
    """What came of a group: the records that ran (or failed on a timeout or a dead worker), those left unrun.

    ``init_error`` is set when the service could not be loaded (no record of the group ran); ``seconds`` is
    the time its records took in the worker (or, when it timed out or died, the time it was given).
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
        flags = Flags(stop=self._ctx.RawValue("b", 0), position=self._ctx.RawValue("l", -1))
        process = self._ctx.Process(target=worker_main, args=(child, self.home, flags), daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, parent, flags)
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
        """In a thread: send ``group`` to ``box[0]`` and wait for its answer; a replaced worker goes in ``box``."""
        worker = box[0]
        flags = worker.flags
        records = group.records
        started = time.perf_counter()
        failure = ""
        running, since = -1, started
        try:
            flags.stop.value = 0
            flags.position.value = -1
            worker.conn.send(group)
            while not worker.conn.poll(WATCH_SECONDS):
                now = time.perf_counter()
                if flags.position.value != running:
                    running, since = flags.position.value, now
                elif now - since > self.timeout:
                    failure = self._timeout_message()
                    break
                if not flags.stop.value and should_stop():
                    flags.stop.value = 1
            else:
                answer: GroupDone = worker.conn.recv()
                if answer.init_error:
                    return GroupRun([], records, answer.init_error, answer.seconds)
                return GroupRun(answer.done, records[len(answer.done) :], "", answer.seconds)
        except (EOFError, OSError):
            failure = _DIED
        seconds = time.perf_counter() - started
        if self.closing:
            return GroupRun(
                [], records, "", seconds
            )  # shutting down: these records run again after a restart
        culprit = max(0, flags.position.value)  # -1: it hung or died loading the service, on the first record
        box[0] = self._replace(worker)
        if culprit >= len(records):
            return GroupRun([], records, "", seconds)
        failed = Outcome(success=False, error_message=failure)
        done = [RecordDone(records[culprit].record_index, False, answer_text(failed))]
        return GroupRun(done, records[:culprit] + records[culprit + 1 :], "", seconds)

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
