"""Section 4 of the contract: asynchronous batch consumption (start, poll, cancel, list, artifacts).

The routes check and store a batch; :class:`~airflow_mlserver.server.runner.BatchRunner` executes it.

Polling is cheap: ``showPartialResults=false`` on an unfinished execution answers state and counts
only. A results list is streamed from the database, so answering it needs memory for one page of
records, not for the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.server.context import (
    Ctx,
    ServerContext,
    check_name,
    current_user,
    parse_json,
    plain_file_name,
)
from airflow_mlserver.server.errors import ApiError, bad_request
from airflow_mlserver.server.files import open_regular_file, regular_files
from airflow_mlserver.server.jobs import record_texts
from airflow_mlserver.server.store import FINISHED, Execution

router = APIRouter()

#: Bytes of an artifact sent at a time.
_CHUNK = 64 * 1024


def _parallel_count(ctx: ServerContext, request: Request) -> int:
    raw = request.query_params.get("parallelCount")
    if raw is None:
        return 10
    limit = ctx.config.max_parallel_count
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(
            f"parallelCount must be a whole number from 1 to {limit}, not {quoted(raw)}."
        ) from None
    if not 1 <= value <= limit:
        raise bad_request(
            f"parallelCount {value} is out of range: use 1 to {limit} (the server's maximum threads per batch "
            "execution)."
        )
    return value


def _execution(ctx: ServerContext, name: str, version: str, execution_id: str) -> Execution:
    ctx.service(name, version)
    check_name("batch execution id", execution_id)
    execution = ctx.store.get_execution(execution_id)
    if execution is None or execution.name != name or execution.version != version:
        raise ApiError(
            404,
            f"Batch execution {quoted(execution_id)} not found for service {quoted(name)} version "
            f"{quoted(version)}. List its executions with GET /api/{name}/{version}/batch.",
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
async def start(ctx: Ctx, request: Request, name: str, version: str) -> JSONResponse:
    service, _ = ctx.service(name, version)
    parallel = _parallel_count(ctx, request)
    records = parse_json(await request.body(), "a list of input records")
    if not isinstance(records, list):
        raise bad_request("The request body must be a JSON list of input records, one object per record.")
    if not records:
        raise bad_request("The batch has no records: send at least one input record.")
    texts = record_texts(service, records)
    del records
    key = _idempotency_key(ctx, request)
    execution, new = ctx.store.create_execution(name, version, texts, parallel, current_user(request), key)
    if new:
        ctx.runner.launch(execution.id)
    answer = {
        "name": name,
        "version": version,
        "batchExecutionId": execution.id,
        "BatchExecutionId": execution.id,
    }
    headers = {} if new else {"Idempotent-Replayed": "true"}
    return JSONResponse(answer, headers=headers)


def _idempotency_key(ctx: ServerContext, request: Request) -> str | None:
    """The start's ``Idempotency-Key`` header, when the server honours keys (a real server ignores it)."""
    key = request.headers.get("idempotency-key")
    if key is None or not ctx.config.idempotency_keys:
        return None
    if not 0 < len(key) <= 255 or not key.isprintable():
        raise bad_request(
            f"The Idempotency-Key header must be 1 to 255 printable characters, not {quoted(key)}: send a new "
            "random key (a UUID) with each batch you start, and the same key only when you send that start again."
        )
    return key


@router.get("/api/{name}/{version}/batch")
async def list_executions(ctx: Ctx, name: str, version: str) -> list[str]:
    ctx.service(name, version)
    return ctx.store.list_execution_ids(name, version)


def _flag(request: Request) -> bool:
    raw = request.query_params.get(
        "showPartialResults", request.query_params.get("showPartialResult", "true")
    )
    if raw.lower() not in ("true", "false", "1", "0"):
        raise bad_request(f"showPartialResults must be true or false, not {quoted(raw)}.")
    return raw.lower() in ("true", "1")


@router.get("/api/{name}/{version}/batch/{execution_id}")
async def status(ctx: Ctx, request: Request, name: str, version: str, execution_id: str) -> Response:
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
async def cancel(ctx: Ctx, name: str, version: str, execution_id: str) -> dict[str, Any]:
    execution = _execution(ctx, name, version, execution_id)
    ctx.store.count_cancel_request(execution_id)
    if execution.state not in FINISHED:
        ctx.runner.cancel(execution_id)
    refreshed = ctx.store.get_execution(execution_id)
    assert refreshed is not None
    return _head(refreshed)


def _record_dir(ctx: ServerContext, execution: Execution, index: str) -> Path:
    if not (index.isascii() and index.isdigit()):
        raise bad_request(f"Record index must be a whole number, not {quoted(index)} (indexes count from 0).")
    i = int(index) if len(index) <= 18 else -1  # longer is beyond any execution (and too long for int())
    if not 0 <= i < execution.total:
        raise ApiError(
            404,
            f"Record index {shortened(index)} is out of range: execution '{execution.id}' has {execution.total} "
            f"records, indexed 0 to {execution.total - 1}.",
        )
    return ctx.store.execution_dir(execution.id) / str(i)


@router.get("/api/{name}/{version}/batch/{execution_id}/{index}/files")
async def list_files(ctx: Ctx, name: str, version: str, execution_id: str, index: str) -> list[str]:
    execution = _execution(ctx, name, version, execution_id)
    folder = _record_dir(ctx, execution, index)
    if ctx.store.get_result(execution_id, int(index)) is None:
        return []  # not run yet (or running): no artifacts so far
    return regular_files(ctx.store.data_dir, folder)


@router.get("/api/{name}/{version}/batch/{execution_id}/{index}/files/{file_name}")
async def get_file(
    ctx: Ctx, name: str, version: str, execution_id: str, index: str, file_name: str
) -> Response:
    if not plain_file_name(file_name):
        raise bad_request(
            f"Invalid file name {quoted(file_name)}: give a plain artifact name, without path separators or "
            "control characters."
        )
    execution = _execution(ctx, name, version, execution_id)
    folder = _record_dir(ctx, execution, index)
    finished = ctx.store.get_result(execution_id, int(index)) is not None
    opened = open_regular_file(ctx.store.data_dir, folder / file_name) if finished else None
    if opened is None:  # only a regular file inside the record's folder is an artifact: no link, fifo, folder
        raise ApiError(
            404,
            f"Record {index} of execution {quoted(execution_id)} has no artifact {quoted(file_name)}. "
            f"List its artifacts with GET .../batch/{execution_id}/{index}/files.",
        )
    file, size = opened

    def chunks() -> Iterator[bytes]:
        with file:
            left = size
            while left > 0 and (chunk := file.read(min(_CHUNK, left))):
                left -= len(chunk)
                yield chunk

    return StreamingResponse(
        chunks(), media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )
