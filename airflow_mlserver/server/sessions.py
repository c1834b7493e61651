"""Sessions, workspace objects and snapshots: as much as a client needs to publish with model objects.

The client creates a session, uploads each model object to its workspace, takes a snapshot, publishes with
that snapshot id, then deletes the session and the snapshot right away. A published service therefore keeps
its own copy of the snapshot's objects (see ``Store.put_service``). A Python session's objects are dill bytes
(as Microsoft's Python client sends them); an R session's are RDS bytes (what R's ``saveRDS`` writes), kept
as sent: the service's runtime loads each one as the variable it is named after.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from airflow_mlserver.client.publishing import is_rds
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server.context import Ctx, ServerContext, current_user, optional_text, parse_json
from airflow_mlserver.server.errors import ApiError, bad_request

router = APIRouter()

_OBJECT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: An R variable name that is also a plain file name: letters, digits, dots and underscores, starting with a
#: letter or with a dot and a letter (so never ``.`` or ``..``).
_R_OBJECT_NAME = re.compile(r"^(?:[A-Za-z]|\.[A-Za-z])[A-Za-z0-9._]{0,127}$")
_RUNTIMES = {"python": "Python", "r": "R"}
#: For messages, per runtime: what an object's name must be, and how its bytes are serialized.
_OBJECT_WORDS = {
    "Python": ("a Python variable name", "dill-serialized"),
    "R": ("an R variable name (letters, digits, '.' and '_', starting with a letter)", "RDS (saveRDS)"),
}


def _session(ctx: ServerContext, session_id: str) -> dict[str, Any]:
    session = ctx.store.get_session(session_id)
    if session is None:
        raise ApiError(404, f"Session {quoted(session_id)} not found: create one with POST /sessions.")
    return session


def _a(runtime: str) -> str:
    return f"an {runtime}" if runtime == "R" else f"a {runtime}"


def snapshot_of(ctx: ServerContext, snapshot_id: str, runtime: str, kind: str) -> dict[str, Any]:
    """The snapshot ``snapshot_id``, whose objects a ``runtime`` ``kind`` (session or service) can load: a 400
    when it is missing or holds another runtime's objects (dill files are no R objects, RDS no Python ones)."""
    snapshot = ctx.store.get_snapshot(snapshot_id)
    if snapshot is None:
        raise bad_request(
            f"Snapshot {quoted(snapshot_id)} not found: take one with POST /sessions/{{id}}/snapshot "
            "(GET /snapshots lists them)."
        )
    taken_in = snapshot.get("runtimeType", "Python")
    if taken_in != runtime:
        raise bad_request(
            f"Snapshot {quoted(snapshot_id)} holds {taken_in} objects: {_a(runtime)} {kind} cannot load them; use "
            f"it with {_a(taken_in)} session or service, or take a snapshot in {_a(runtime)} session."
        )
    return snapshot


@router.post("/sessions")
async def create_session(ctx: Ctx, request: Request) -> Response:
    raw = await request.body()
    body = parse_json(raw, "a CreateSessionRequest") if raw else {}
    if not isinstance(body, dict):
        raise bad_request("The request body must be a CreateSessionRequest object.")
    given = optional_text(body, "runtimeType") or "Python"
    runtime = _RUNTIMES.get(given.lower())
    if runtime is None:
        raise bad_request(f"Unknown runtimeType {quoted(given)}: use 'Python' or 'R'.")
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
            "runtimeType": runtime,
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
    runtime = _session(ctx, session_id).get("runtimeType", "Python")
    if not _object_name_rule(runtime).match(object_name):
        raise bad_request(
            f"Invalid workspace object name {quoted(object_name)}: use {_OBJECT_WORDS[runtime][0]}."
        )
    body = await request.body()
    if not body:
        raise bad_request(
            f"Workspace object {quoted(object_name)} is empty: send its {_OBJECT_WORDS[runtime][1]} bytes."
        )
    if runtime == "R" and not is_rds(body):
        raise bad_request(
            f"Workspace object {quoted(object_name)} of R session {quoted(session_id)} is not RDS (it starts "
            f"with {body[:8]!r}): send what R's saveRDS writes."
        )
    (ctx.store.session_dir(session_id) / object_name).write_bytes(body)
    return Response(status_code=200)


def _object_name_rule(runtime: str) -> re.Pattern[str]:
    """The names a session's objects may have: variable names of its runtime."""
    return _R_OBJECT_NAME if runtime == "R" else _OBJECT_NAME


@router.delete("/sessions/{session_id}/workspace/{object_name}")
async def delete_object(ctx: Ctx, session_id: str, object_name: str) -> Response:
    runtime = _session(ctx, session_id).get("runtimeType", "Python")
    path = ctx.store.session_dir(session_id) / object_name
    if not _object_name_rule(runtime).match(object_name) or not path.is_file():
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
            "runtimeType": session.get("runtimeType", "Python"),
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
