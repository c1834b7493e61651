"""Section 2 of the contract: publish, list, get, patch and delete web services; per-service swagger.json."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from airflow_mlserver.client.parameters import PARAMETER_TYPES
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server import runtimes
from airflow_mlserver.server.context import (
    Ctx,
    ServerContext,
    check_name,
    current_user,
    optional_text,
    plain_file_name,
    read_json,
    requested_runtime,
)
from airflow_mlserver.server.errors import ApiError, bad_request
from airflow_mlserver.server.runtimes import Runtime
from airflow_mlserver.server.sessions import snapshot_of
from airflow_mlserver.server.swagger import swagger_document

router = APIRouter()

_EDITABLE = (
    "code",
    "initCode",
    "description",
    "operationId",
    "inputParameterDefinitions",
    "outputParameterDefinitions",
    "outputFileNames",
    "snapshotId",
    "runtimeType",
)


def _check_parameters(field: str, value: Any, runtime: Runtime) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f'\'{field}\' must be a list of {{"name", "type"}} objects.')
    seen: set[str] = set()
    result = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("type"), str)
        ):
            raise bad_request(f"'{field}[{i}]' must be an object with string 'name' and 'type'.")
        name, kind = item["name"], item["type"]
        if not runtime.valid_name(name):
            raise bad_request(f"'{field}[{i}]': {quoted(name)} is not a valid {runtime.name} variable name.")
        if kind not in PARAMETER_TYPES:
            raise bad_request(
                f"'{field}[{i}]': unknown type {quoted(kind)} for {quoted(name)}; use one of "
                f"{', '.join(PARAMETER_TYPES)}."
            )
        if name in seen:
            raise bad_request(f"'{field}': the parameter {quoted(name)} is declared twice.")
        seen.add(name)
        result.append({"name": name, "type": kind})
    return result


def _check_file_names(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("'outputFileNames' must be a list of file names.")
    for name in value:
        if not plain_file_name(name):
            raise bad_request(
                f"'outputFileNames': {quoted(name)} is not a plain file name (no path separators or control "
                "characters)."
            )
    return list(value)


def _validate(
    body: dict[str, Any], partial: bool, stored_runtime: Runtime = runtimes.DEFAULT
) -> dict[str, Any]:
    """The fields of a publish (or patch) request, checked; raises a 400 naming the first problem.

    ``stored_runtime`` is the runtime of the service a patch changes (when the patch does not set one).
    """
    clean: dict[str, Any] = {}
    runtime = stored_runtime
    if body.get("runtimeType") is not None or not partial:
        runtime = requested_runtime(body)
        clean["runtimeType"] = runtime.name
    if not partial or body.get("code") is not None:
        code = body.get("code")
        if not isinstance(code, str) or not code.strip():
            raise bad_request(f"'code' is required: the {runtime.name} code the service runs.")
        clean["code"] = code
    for key in ("initCode", "description", "operationId", "snapshotId"):
        text = optional_text(body, key)
        if text is not None:
            clean[key] = text
    for key in ("inputParameterDefinitions", "outputParameterDefinitions"):
        if not partial or body.get(key) is not None:
            clean[key] = _check_parameters(key, body.get(key), runtime)
    if not partial or body.get("outputFileNames") is not None:
        clean["outputFileNames"] = _check_file_names(body.get("outputFileNames"))
    for key in ("code", "initCode"):
        problem = runtime.check_code(key, clean[key]) if clean.get(key) else ""
        if problem:
            raise bad_request(problem)
    return clean


def public(service: dict[str, Any], user: str) -> dict[str, Any]:
    """A stored service as the WebService object clients read."""
    out = {
        "name": service["name"],
        "version": service["version"],
        "versionPublishedBy": service["versionPublishedBy"],
        "creationTime": service["creationTime"],
        "snapshotId": service.get("snapshotId"),
        "runtimeType": runtimes.stored(service).name,
        "initCode": service.get("initCode"),
        "code": service["code"],
        "description": service.get("description") or "",
        "operationId": service.get("operationId"),
        "inputParameterDefinitions": service.get("inputParameterDefinitions", []),
        "outputParameterDefinitions": service.get("outputParameterDefinitions", []),
        "outputFileNames": service.get("outputFileNames", []),
        "myPermissionOnService": "read/write" if service["versionPublishedBy"] == user else "read only",
    }
    return out


def _snapshot_objects(ctx: ServerContext, snapshot_id: str | None, runtime: Runtime) -> Any:
    if not snapshot_id:
        return None
    snapshot_of(ctx, snapshot_id, runtime, "service")
    return ctx.store.snapshot_dir(snapshot_id)


async def _publish(ctx: ServerContext, request: Request, name: str, version: str) -> Response:
    check_name("service name", name)
    check_name("service version", version)
    body = await read_json(request, dict, "a PublishWebServiceRequest object")
    clean = _validate(body, partial=False)
    if ctx.store.get_service(name, version) is not None:
        raise ApiError(
            403, f"Web service {quoted(name)} version {quoted(version)} already exists: update it with PATCH."
        )
    objects = _snapshot_objects(ctx, clean.get("snapshotId"), runtimes.get(clean["runtimeType"]))
    service = {
        "name": name,
        "version": version,
        "versionPublishedBy": current_user(request),
        "creationTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        **clean,
    }
    ctx.store.put_service(service, objects)
    return JSONResponse(f"/api/{name}/{version}", status_code=201)


@router.get("/services")
async def list_all(ctx: Ctx, request: Request) -> list[dict[str, Any]]:
    return [public(s, current_user(request)) for s in ctx.store.list_services()]


@router.get("/services/{name}")
async def list_versions(ctx: Ctx, request: Request, name: str) -> list[dict[str, Any]]:
    check_name("service name", name)
    services = ctx.store.list_services(name)
    if not services:
        raise ApiError(
            404, f"Web service {quoted(name)} not found. List the published services with GET /services."
        )
    return [public(s, current_user(request)) for s in services]


@router.get("/services/{name}/{version}")
async def get_version(ctx: Ctx, request: Request, name: str, version: str) -> list[dict[str, Any]]:
    service, _ = ctx.service(name, version)
    return [public(service, current_user(request))]


@router.post("/services/{name}/{version}")
async def publish_version(ctx: Ctx, request: Request, name: str, version: str) -> Response:
    return await _publish(ctx, request, name, version)


@router.post("/services/{name}")
async def publish_new_version(ctx: Ctx, request: Request, name: str) -> Response:
    return await _publish(ctx, request, name, str(uuid.uuid4()))


def _owned(ctx: ServerContext, request: Request, name: str, version: str) -> dict[str, Any]:
    service, _ = ctx.service(name, version)
    if service["versionPublishedBy"] != current_user(request):
        raise ApiError(
            403,
            f"Web service {quoted(name)} version {quoted(version)} belongs to "
            f"{quoted(service['versionPublishedBy'])}: only its publisher may change or delete it.",
        )
    return service


@router.patch("/services/{name}/{version}")
async def patch_version(ctx: Ctx, request: Request, name: str, version: str) -> Response:
    service = _owned(ctx, request, name, version)
    body = await read_json(request, dict, "a PatchWebServiceRequest object")
    stored = runtimes.stored(service)
    clean = _validate(body, partial=True, stored_runtime=stored)
    objects = _snapshot_objects(
        ctx, clean.get("snapshotId"), runtimes.get(clean.get("runtimeType", stored.name))
    )
    service.update({k: v for k, v in clean.items() if k in _EDITABLE})
    ctx.store.put_service(service, objects)
    return JSONResponse(f"/api/{name}/{version}", status_code=200)


@router.delete("/services/{name}/{version}")
async def delete_version(ctx: Ctx, request: Request, name: str, version: str) -> Response:
    _owned(ctx, request, name, version)
    ctx.store.delete_service(name, version)
    return JSONResponse(True)


@router.get("/api/{name}/{version}/swagger.json")
async def swagger(ctx: Ctx, request: Request, name: str, version: str) -> dict[str, Any]:
    service, _ = ctx.service(name, version)
    return swagger_document(service, request.headers.get("host", "localhost:12800"))
