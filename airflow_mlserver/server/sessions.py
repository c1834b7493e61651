"""Sessions, workspace objects and snapshots: as much as a client needs to publish with model objects.

The client creates a session, uploads each model object to its workspace, takes a snapshot, publishes with
that snapshot id, then deletes the session and the snapshot right away. A published service therefore keeps
its own copy of the snapshot's objects (see ``Store.put_service``). A Python session's objects are dill bytes
(as Microsoft's Python client sends them); an R session's are RDS bytes (what R's ``saveRDS`` writes), kept
as sent: the service's runtime loads each one as the variable it is named after.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server import runtimes
from airflow_mlserver.server.context import (
    Ctx,
    ServerContext,
    current_user,
    optional_text,
    parse_json,
    requested_runtime,
)
from airflow_mlserver.server.errors import ApiError, bad_request
from airflow_mlserver.server.runtimes import Runtime

router = APIRouter()


def _session(ctx: ServerContext, session_id: str) -> dict[str, Any]:
    session = ctx.store.get_session(session_id)
    if session is None:
        raise ApiError(404, f"Session {quoted(session_id)} not found: create one with POST /sessions.")
    return session


def snapshot_of(ctx: ServerContext, snapshot_id: str, runtime: Runtime, kind: str) -> dict[str, Any]:
    """The snapshot ``snapshot_id``, whose objects a ``runtime`` ``kind`` (session or service) can load: a 400
    when it is missing or holds another runtime's objects (dill files are no R objects, RDS no Python ones)."""
    snapshot = ctx.store.get_snapshot(snapshot_id)
    if snapshot is None:
        raise bad_request(
            f"Snapshot {quoted(snapshot_id)} not found: take one with POST /sessions/{{id}}/snapshot "
            "(GET /snapshots lists them)."
        )
    taken_in = runtimes.stored(snapshot)
    if taken_in is not runtime:
        raise bad_request(
            f"Snapshot {quoted(snapshot_id)} holds {taken_in.name} objects: {runtime.with_article} {kind} cannot "
            f"load them; use it with {taken_in.with_article} session or service, or take a snapshot in "
            f"{runtime.with_article} session."
        )
    return snapshot


@router.post("/sessions")
async def create_session(ctx: Ctx, request: Request) -> Response:
    raw = await request.body()
    body = parse_json(raw, "a CreateSessionRequest") if raw else {}
    if not isinstance(body, dict):
        raise bad_request("The request body must be a CreateSessionRequest object.")
    runtime = requested_runtime(body)
    snapshot_id = optional_text(body, "snapshotId")
    if snapshot_id:
        snapshot_of(ctx, snapshot_id, runtime, "session")
    name = optional_text(body, "name") or ""
    session_id = str(uuid.uuid4())
    ctx.store.put_session(
        {
            "id": session_id,
            "name": name,
            "owner": current_user(request),
            "runtimeType": runtime.name,
        }
    )
    if snapshot_id:
        for path in ctx.store.snapshot_dir(snapshot_id).iterdir():
            (ctx.store.session_dir(session_id) / path.name).write_bytes(path.read_bytes())
    return JSONResponse({"sessionId": session_id}, status_code=201)


@router.get("/sessions")
async def list_sessions(ctx: Ctx, request: Request) -> list[dict[str, Any]]:
    return [s for s in ctx.store.list_sessions() if s["owner"] == current_user(request)]


@router.delete("/sessions/{session_id}")
async def close_session(ctx: Ctx, session_id: str) -> Response:
    _session(ctx, session_id)
    ctx.store.delete_session(session_id)
    return Response(status_code=200)


@router.delete("/sessions/{session_id}/force")
async def force_close_session(ctx: Ctx, session_id: str) -> Response:
    return await close_session(ctx, session_id)


@router.get("/sessions/{session_id}/workspace")
async def list_workspace(ctx: Ctx, session_id: str) -> list[str]:
    _session(ctx, session_id)
    return sorted(p.name for p in ctx.store.session_dir(session_id).iterdir())


@router.post("/sessions/{session_id}/workspace/{object_name}")
async def upload_object(ctx: Ctx, request: Request, session_id: str, object_name: str) -> Response:
    runtime = runtimes.stored(_session(ctx, session_id))
    if not runtime.object_name.match(object_name):
        raise bad_request(
            f"Invalid workspace object name {quoted(object_name)}: use {runtime.variable_noun}."
        )
    body = await request.body()
    if not body:
        raise bad_request(
            f"Workspace object {quoted(object_name)} is empty: send its {runtime.model_format} bytes."
        )
    problem = runtime.check_model_object(body)
    if problem:
        raise bad_request(
            f"Workspace object {quoted(object_name)} of {runtime.name} session {quoted(session_id)} {problem}"
        )
    (ctx.store.session_dir(session_id) / object_name).write_bytes(body)
    return Response(status_code=200)


@router.delete("/sessions/{session_id}/workspace/{object_name}")
async def delete_object(ctx: Ctx, session_id: str, object_name: str) -> Response:
    runtime = runtimes.stored(_session(ctx, session_id))
    path = ctx.store.session_dir(session_id) / object_name
    if not runtime.object_name.match(object_name) or not path.is_file():
        raise ApiError(
            404, f"Workspace object {quoted(object_name)} not found in session {quoted(session_id)}."
        )
    path.unlink()
    return Response(status_code=200)


@router.post("/sessions/{session_id}/snapshot")
async def create_snapshot(ctx: Ctx, request: Request, session_id: str) -> Response:
    session = _session(ctx, session_id)
    snapshot_id = str(uuid.uuid4())
    ctx.store.put_snapshot(
        {
            "id": snapshot_id,
            "name": session.get("name") or "",
            "owner": current_user(request),
            "creationTime": time.strftime("%Y-%m-%d", time.gmtime()),
            "runtimeType": runtimes.stored(session).name,
        },
        session_id,
    )
    return JSONResponse({"snapshotId": snapshot_id}, status_code=201)


@router.get("/snapshots")
async def list_snapshots(ctx: Ctx, request: Request) -> list[dict[str, Any]]:
    return [s for s in ctx.store.list_snapshots() if s["owner"] == current_user(request)]


@router.get("/snapshots/{snapshot_id}")
async def get_snapshot(ctx: Ctx, snapshot_id: str) -> dict[str, Any]:
    snapshot = ctx.store.get_snapshot(snapshot_id)
    if snapshot is None:
        raise ApiError(404, f"Snapshot {quoted(snapshot_id)} not found.")
    return snapshot


@router.delete("/snapshots/{snapshot_id}")
async def delete_snapshot(ctx: Ctx, snapshot_id: str) -> Response:
    if ctx.store.get_snapshot(snapshot_id) is None:
        raise ApiError(404, f"Snapshot {quoted(snapshot_id)} not found.")
    ctx.store.delete_snapshot(snapshot_id)
    return Response(status_code=200)
