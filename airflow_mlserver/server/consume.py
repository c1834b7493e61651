"""Section 3 of the contract: request-response consumption (one call, one execution)."""

from __future__ import annotations

import base64
import shutil
import uuid
from typing import Any

from fastapi import APIRouter, Request

from airflow_mlserver.server.context import Ctx, read_json
from airflow_mlserver.server.files import open_regular_file
from airflow_mlserver.server.jobs import answer, build_job, check_record

router = APIRouter()


@router.post("/api/{name}/{version}")
async def consume(ctx: Ctx, request: Request, name: str, version: str) -> dict[str, Any]:
    service, revision = ctx.service(name, version)
    inputs = await read_json(request, dict, "a JSON object of the service's inputs")
    check_record(service, inputs, "The request body")
    workdir = ctx.store.data_dir / "consume" / str(uuid.uuid4())
    try:
        outcome = await ctx.pool.run(build_job(ctx.store, service, revision, inputs, workdir))
        files = {}
        for name in outcome.artifacts:
            opened = open_regular_file(ctx.store.data_dir, workdir / name)
            if opened is not None:  # a regular file when the execution ended, and still one
                with opened[0] as file:
                    files[name] = base64.b64encode(file.read()).decode()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return answer(outcome, files)
