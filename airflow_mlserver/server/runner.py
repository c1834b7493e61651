"""The runner that executes batch executions (section 4 of the contract) on the worker pool, in groups.

An execution runs on up to ``parallelCount`` lanes; a lane takes the next records, in input order, as a group
when a worker is free, and commits the group's results in one transaction: a record counts (completed, and in
the partial results) only once its result is committed, so a restarted server reruns exactly the records that
have none. A group is sized to about :data:`GROUP_SECONDS` of work by the measured time per record, starting
at one record and at most doubling (up to :data:`GROUP_CAP`): a slow service runs a record per group, a
trivial one hundreds, and the server's cost per record (a thread hop, a pipe round trip, a commit) is paid
per group.

A cancel is seen between two records, not only between groups: while a group runs, its thread checks the
cancel every few milliseconds (``workers.WATCH_SECONDS``) and raises the worker's stop flag, which the worker
reads before each record; lanes take no new group. Records that ran keep their result (the worker answers
with what it ran). A record that runs past the execution timeout fails alone; the records of its
group it had not reached are sent again. An ``initCode`` failure fails the execution. An execution stays
``Pending`` until a worker takes its first group, as on a busy real server. On shutdown, lanes stop between
records and commit what ran (for up to :data:`DRAIN_SECONDS`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil

from airflow_mlserver.client.quoting import shortened
from airflow_mlserver.server.jobs import build_job
from airflow_mlserver.server.runtimes.protocol import Group, GroupRecord, Job
from airflow_mlserver.server.store import CANCELED, COMPLETE, FAILED, FINISHED, RUNNING, Store
from airflow_mlserver.server.workers import GroupRun, WorkerPool

log = logging.getLogger("airflow_mlserver.server")

#: About how long one group of records should keep a worker busy.
GROUP_SECONDS = 0.05
#: The most records in one group.
GROUP_CAP = 256
#: How long a shutdown waits for the groups under way to stop and be committed.
DRAIN_SECONDS = 3.0


class GroupSize:
    """The size of an execution's next group, from the measured time per record (see the module docstring)."""

    def __init__(self) -> None:
        self.size = 1
        self._per_record: float | None = None

    def measured(self, records: int, seconds: float) -> None:
        if records <= 0:
            return
        per_record = seconds / records
        known = self._per_record
        self._per_record = per_record if known is None else (known + per_record) / 2
        fits = int(GROUP_SECONDS / max(self._per_record, 1e-6))
        self.size = max(1, min(GROUP_CAP, 2 * self.size, fits))


class _Feed:
    """An execution's records without a result, in input order; records handed back run first."""

    def __init__(self, store: Store, execution_id: str) -> None:
        self.store = store
        self.execution_id = execution_id
        self.folder = str(store.execution_dir(execution_id))
        self.again: collections.deque[GroupRecord] = collections.deque()
        self._page: collections.deque[GroupRecord] = collections.deque()
        self._after = -1
        self._exhausted = False

    def _fill(self, wanted: int) -> None:
        while len(self._page) < wanted and not self._exhausted:
            rows = self.store.pending_records(self.execution_id, self._after, max(wanted, 1000))
            if not rows:
                self._exhausted = True
                return
            self._after = rows[-1][0]
            self._page.extend(GroupRecord(i, text) for i, text in rows)

    def take(self, size: int) -> list[GroupRecord]:
        taken: list[GroupRecord] = []
        while self.again and len(taken) < size:
            taken.append(self.again.popleft())
        if len(taken) < size:
            self._fill(size - len(taken))
            while self._page and len(taken) < size:
                taken.append(self._page.popleft())
        return taken

    def give_back(self, records: list[GroupRecord]) -> None:
        self.again.extendleft(reversed(records))


class BatchRunner:
    """Runs batch executions in the server's event loop, on the worker pool."""

    def __init__(self, store: Store, pool: WorkerPool) -> None:
        self.store = store
        self.pool = pool
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._canceled: set[str] = set()
        self._stopping = False

    def launch(self, execution_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(execution_id))
        self._tasks[execution_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(execution_id, None))

    def resume_unfinished(self) -> None:
        """After a restart: run what every pending or running execution has left."""
        for execution_id in self.store.unfinished_execution_ids():
            self.launch(execution_id)

    def cancel(self, execution_id: str) -> None:
        self._canceled.add(execution_id)
        self.store.set_state(execution_id, CANCELED)

    async def stop(self) -> None:
        """Stop every execution between two records, commit what ran, and leave them to resume after a restart."""
        self._stopping = True
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _clear_unfinished_folders(self, execution_id: str) -> None:
        """Remove the folders of records cut short by a restart: a record's rerun starts without files."""
        folder = self.store.execution_dir(execution_id)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(folder):
                if not name.isdigit() or self.store.get_result(execution_id, int(name)) is None:
                    shutil.rmtree(folder / name, ignore_errors=True)

    async def _run(self, execution_id: str) -> None:
        store = self.store
        execution = store.get_execution(execution_id)
        if execution is None or execution.state in FINISHED:
            return
        found = store.get_service(execution.name, execution.version)
        if found is None:
            store.set_state(
                execution_id,
                FAILED,
                f"Web service '{execution.name}' version "
                f"'{execution.version}' was deleted before the execution finished.",
            )
            return
        service, revision = found
        started = execution.state == RUNNING
        if started:  # it ran before a restart: some records' folders may be half-written
            self._clear_unfinished_folders(execution_id)
        job: Job = build_job(store, service, revision, {})
        feed = _Feed(store, execution_id)
        size = GroupSize()
        failure: list[str] = []

        def stopped() -> bool:
            return self._stopping or execution_id in self._canceled or bool(failure)

        def take() -> Group | None:
            """A worker is free: the next group, or None when the execution has nothing more to run."""
            nonlocal started
            if stopped():
                return None
            records = feed.take(size.size)
            if not records:
                return None
            if not started:
                started = True
                store.set_state(execution_id, RUNNING)
            return Group(job, records, feed.folder)

        def commit(run: GroupRun) -> None:
            size.measured(len(run.done) or 1, run.seconds)
            if run.init_error:
                failure.append(run.init_error)
                return
            if run.done:
                store.save_results(execution_id, [(d.record_index, d.success, d.result) for d in run.done])
            if run.unrun and not self._stopping:
                feed.give_back(run.unrun)

        async def lane() -> None:
            while (run := await self.pool.run_group(take, stopped)) is not None:
                commit(run)

        try:
            while True:
                lanes = min(execution.parallel_count, max(1, execution.total - execution.completed))
                await asyncio.gather(*(lane() for _ in range(lanes)))
                if not feed.again or stopped():
                    break  # else: records given back after the last lane ended (a timeout) run now
        except asyncio.CancelledError:
            raise  # server shutdown: the execution stays running and resumes after a restart
        except Exception as exc:
            log.exception("Batch execution %s stopped", execution_id)
            error = f"{type(exc).__name__}: {shortened(str(exc))}"
            store.set_state(
                execution_id, FAILED, f"The execution stopped on a server error ({error}): see its log."
            )
            return
        if self._stopping:
            return  # server shutdown: the execution stays running and resumes after a restart
        if failure:
            store.set_state(execution_id, FAILED, failure[0])
        elif execution_id not in self._canceled:
            store.set_state(execution_id, COMPLETE)
        self._canceled.discard(execution_id)
