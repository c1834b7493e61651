"""The runner that executes batch executions (section 4 of the contract) on the worker pool.

An execution runs ``parallelCount`` records at a time (lanes), in input order, on the shared worker
pool. Each finished record is committed with its result before it counts, so a restarted server picks
up exactly the records that have no result yet. A cancel stops the lanes from taking new records;
records already running finish and keep their result. An ``initCode`` failure fails the execution. An
execution stays ``Pending`` until a worker takes its first record, as on a busy real server.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator

from airflow_mlserver.client.quoting import shortened
from airflow_mlserver.server.jobs import answer, build_job
from airflow_mlserver.server.store import CANCELED, COMPLETE, FAILED, FINISHED, RUNNING, Store
from airflow_mlserver.server.workers import WorkerPool

log = logging.getLogger("airflow_mlserver.server")


class BatchRunner:
    """Runs batch executions in the server's event loop, on the worker pool."""

    def __init__(self, store: Store, pool: WorkerPool) -> None:
        self.store = store
        self.pool = pool
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._canceled: set[str] = set()

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
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _pending(self, execution_id: str) -> Iterator[int]:
        after = -1
        while True:
            page = self.store.pending_indexes(execution_id, after, 1000)
            if not page:
                return
            yield from page
            after = page[-1]

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
        resumed = execution.state == RUNNING  # it ran before a restart: some folders may be half-written
        started = resumed

        def running() -> None:
            """A worker took a record: the execution has started (written once)."""
            nonlocal started
            if not started:
                started = True
                store.set_state(execution_id, RUNNING)

        pending = self._pending(execution_id)
        failure: list[str] = []
        record_dir = store.execution_dir(execution_id)

        async def lane() -> None:
            while execution_id not in self._canceled and not failure:
                index = next(pending, None)
                if index is None:
                    return
                workdir = record_dir / str(index)
                if resumed and workdir.exists():
                    shutil.rmtree(workdir)  # a fresh folder for a record that was cut short by a restart
                inputs = store.get_input(execution_id, index)
                outcome = await self.pool.run(
                    build_job(store, service, revision, inputs, workdir, artifacts_only=True), running
                )
                if self.pool.closing:
                    return  # shutting down: the record runs again after a restart
                if outcome.init_failed:
                    failure.append(outcome.error_message)
                    return
                store.save_result(execution_id, index, answer(outcome, {}))

        lanes = min(execution.parallel_count, max(1, execution.total - execution.completed))
        try:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        except asyncio.CancelledError:
            raise  # server shutdown: the execution stays running and resumes after a restart
        except Exception as exc:
            log.exception("Batch execution %s stopped", execution_id)
            error = f"{type(exc).__name__}: {shortened(str(exc))}"
            store.set_state(
                execution_id, FAILED, f"The execution stopped on a server error ({error}): see its log."
            )
            return
        if failure:
            store.set_state(execution_id, FAILED, failure[0])
        elif execution_id not in self._canceled:
            store.set_state(execution_id, COMPLETE)
        self._canceled.discard(execution_id)
