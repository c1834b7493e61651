"""Section 4 of the contract: asynchronous batch consumption, and the runner that executes batches.

An execution runs ``parallelCount`` records at a time (lanes), in input order, on the shared worker
pool. Each finished record is committed with its result before it counts, so a restarted server picks
up exactly the records that have no result yet. A cancel stops the lanes from taking new records;
records already running finish and keep their result. An ``initCode`` failure fails the execution.

Polling is cheap: ``showPartialResults=false`` on an unfinished execution answers state and counts
only. A results list is streamed from the database, so answering it needs memory for one page of
records, not for the batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from airflow_mlserver.server.consume import answer, build_job, check_record
from airflow_mlserver.server.context import ServerContext, current_user
from airflow_mlserver.server.errors import ApiError, bad_request
from airflow_mlserver.server.store import CANCELED, COMPLETE, FAILED, FINISHED, RUNNING, Execution

log = logging.getLogger("airflow_mlserver.server")
router = APIRouter()


class BatchRunner:
    """Runs batch executions in the server's event loop, on the worker pool."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._canceled: set[str] = set()

    def launch(self, execution_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(execution_id))
        self._tasks[execution_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(execution_id, None))

    def resume_unfinished(self) -> None:
        """After a restart: run what every pending or running execution has left."""
        for execution_id in self.ctx.store.unfinished_execution_ids():
            self.launch(execution_id)

    def cancel(self, execution_id: str) -> None:
        self._canceled.add(execution_id)
        self.ctx.store.set_state(execution_id, CANCELED)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _pending(self, execution_id: str) -> Iterator[int]:
        after = -1
        while True:
            page = self.ctx.store.pending_indexes(execution_id, after, 1000)
            if not page:
                return
            yield from page
            after = page[-1]

    async def _run(self, execution_id: str) -> None:
        store = self.ctx.store
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
        store.set_state(execution_id, RUNNING)
        pending = self._pending(execution_id)
        failure: list[str] = []
        record_dir = store.execution_dir(execution_id)
        resumed = execution.state == RUNNING  # it ran before a restart: some folders may be half-written

        async def lane() -> None:
            while execution_id not in self._canceled and not failure:
                index = next(pending, None)
                if index is None:
                    return
                workdir = record_dir / str(index)
                if resumed and workdir.exists():
                    shutil.rmtree(workdir)  # a fresh folder for a record that was cut short by a restart
                job = build_job(self.ctx, service, revision, store.get_input(execution_id, index), workdir)
                job["artifacts_only"] = True
                result = await self.ctx.pool.run(job)
                if self.ctx.pool.closing:
                    return  # shutting down: the record runs again after a restart
                if result.get("initFailed"):
                    failure.append(result["errorMessage"])
                    return
                store.save_result(execution_id, index, answer(result, {}))

        lanes = min(execution.parallel_count, max(1, execution.total - execution.completed))
        try:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        except asyncio.CancelledError:
            raise  # server shutdown: the execution stays running and resumes after a restart
        except Exception as exc:
            log.exception("Batch execution %s stopped", execution_id)
            store.set_state(execution_id, FAILED, f"The execution stopped on a server error: {exc}")
            return
        if failure:
            store.set_state(execution_id, FAILED, failure[0])
        elif execution_id not in self._canceled:
            store.set_state(execution_id, COMPLETE)
        self._canceled.discard(execution_id)


def _parallel_count(ctx: ServerContext, request: Request) -> int:
    raw = request.query_params.get("parallelCount")
    if raw is None:
        return 10
    limit = ctx.config.max_parallel_count
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"parallelCount must be a whole number from 1 to {limit}, not {raw!r}.") from None
    if not 1 <= value <= limit:
        raise bad_request(
            f"parallelCount {value} is out of range: use 1 to {limit} (the server's maximum threads per batch "
            "execution)."
        )
    return value


def _execution(ctx: ServerContext, name: str, version: str, execution_id: str) -> Execution:
    ctx.service(name, version)
    execution = ctx.store.get_execution(execution_id)
    if execution is None or execution.name != name or execution.version != version:
        raise ApiError(
            404,
            f"Batch execution '{execution_id}' not found for service '{name}' version '{version}'. "
            f"List its executions with GET /api/{name}/{version}/batch.",
        )
    return execution


def _head(execution: Execution) -> dict[str, Any]:
    head: dict[str, Any] = {
        "name": execution.name,
        "version": execution.version,
        "batchExecutionId": execution.id,
        "state": execution.state,
        "totalItemCount": execution.total,
        "completedItemCount": execution.completed,
        "failedItemCount": execution.failed,
        "parallelCount": execution.parallel_count,
        "cancelRequestCount": execution.cancel_requests,
    }
    if execution.error:
        head["errorMessage"] = execution.error
    return head


@router.post("/api/{name}/{version}/batch")
async def start(request: Request, name: str, version: str) -> dict[str, Any]:
    ctx: ServerContext = request.app.state.ctx
    service, _ = ctx.service(name, version)
    parallel = _parallel_count(ctx, request)
    raw = await request.body()
    try:
        records = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(
            f"The request body is not valid JSON ({exc}); expected a list of input records."
        ) from None
    if not isinstance(records, list):
        raise bad_request("The request body must be a JSON list of input records, one object per record.")
    if not records:
        raise bad_request("The batch has no records: send at least one input record.")
    for i, record in enumerate(records):
        check_record(service, record, f"Record {i}")
    texts = [json.dumps(r, separators=(",", ":")) for r in records]
    del records
    execution = ctx.store.create_execution(name, version, texts, parallel, current_user(request))
    assert ctx.runner is not None
    ctx.runner.launch(execution.id)
    return {
        "name": name,
        "version": version,
        "batchExecutionId": execution.id,
        "BatchExecutionId": execution.id,
    }


@router.get("/api/{name}/{version}/batch")
async def list_executions(request: Request, name: str, version: str) -> list[str]:
    ctx: ServerContext = request.app.state.ctx
    ctx.service(name, version)
    return ctx.store.list_execution_ids(name, version)


def _flag(request: Request) -> bool:
    raw = request.query_params.get(
        "showPartialResults", request.query_params.get("showPartialResult", "true")
    )
    if raw.lower() not in ("true", "false", "1", "0"):
        raise bad_request(f"showPartialResults must be true or false, not {raw!r}.")
    return raw.lower() in ("true", "1")


@router.get("/api/{name}/{version}/batch/{execution_id}")
async def status(request: Request, name: str, version: str, execution_id: str) -> Response:
    ctx: ServerContext = request.app.state.ctx
    execution = _execution(ctx, name, version, execution_id)
    partial = _flag(request)
    head = _head(execution)
    if not partial and execution.state not in FINISHED:
        return JSONResponse(head)

    def stream() -> Iterator[bytes]:
        yield json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"batchExecutionResults":['
        first = True
        buffer: list[str] = []
        flush_at = 64  # a small first piece, then larger ones (see Store.iter_result_texts)
        for text in ctx.store.iter_result_texts(execution_id):
            buffer.append(text)
            if len(buffer) >= flush_at:
                yield ((",".join(buffer)) if first else "," + ",".join(buffer)).encode()
                first, buffer, flush_at = False, [], 500
        if buffer:
            yield ((",".join(buffer)) if first else "," + ",".join(buffer)).encode()
        yield b"]}"

    return StreamingResponse(stream(), media_type="application/json")


@router.delete("/api/{name}/{version}/batch/{execution_id}")
async def cancel(request: Request, name: str, version: str, execution_id: str) -> dict[str, Any]:
    ctx: ServerContext = request.app.state.ctx
    execution = _execution(ctx, name, version, execution_id)
    ctx.store.count_cancel_request(execution_id)
    if execution.state not in FINISHED:
        assert ctx.runner is not None
        ctx.runner.cancel(execution_id)
    refreshed = ctx.store.get_execution(execution_id)
    assert refreshed is not None
    return _head(refreshed)


def _record_dir(ctx: ServerContext, execution: Execution, index: str) -> Any:
    try:
        i = int(index)
    except ValueError:
        raise bad_request(
            f"Record index must be a whole number, not {index!r} (indexes count from 0)."
        ) from None
    if not 0 <= i < execution.total:
        raise ApiError(
            404,
            f"Record index {i} is out of range: execution '{execution.id}' has {execution.total} records, "
            f"indexed 0 to {execution.total - 1}.",
        )
    return ctx.store.execution_dir(execution.id) / str(i)


@router.get("/api/{name}/{version}/batch/{execution_id}/{index}/files")
async def list_files(request: Request, name: str, version: str, execution_id: str, index: str) -> list[str]:
    ctx: ServerContext = request.app.state.ctx
    execution = _execution(ctx, name, version, execution_id)
    folder = _record_dir(ctx, execution, index)
    if ctx.store.get_result(execution_id, int(index)) is None:
        return []  # not run yet (or running): no artifacts so far
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@router.get("/api/{name}/{version}/batch/{execution_id}/{index}/files/{file_name}")
async def get_file(
    request: Request, name: str, version: str, execution_id: str, index: str, file_name: str
) -> Response:
    ctx: ServerContext = request.app.state.ctx
    if "/" in file_name or "\\" in file_name or file_name in (".", "..") or not file_name:
        raise bad_request(
            f"Invalid file name {file_name!r}: give a plain artifact name, without path separators."
        )
    execution = _execution(ctx, name, version, execution_id)
    folder = _record_dir(ctx, execution, index)
    path = folder / file_name
    if ctx.store.get_result(execution_id, int(index)) is None or not path.is_file():
        raise ApiError(
            404,
            f"Record {index} of execution '{execution_id}' has no artifact '{file_name}'. "
            f"List its artifacts with GET .../batch/{execution_id}/{index}/files.",
        )
    return FileResponse(path, media_type="application/octet-stream")
