"""The local server's FastAPI application: the contract's routers, error answers, ``/status``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_mlserver import __version__
from airflow_mlserver.client.quoting import shortened
from airflow_mlserver.server import auth, batch, consume, services, sessions
from airflow_mlserver.server.config import ServerConfig
from airflow_mlserver.server.context import Ctx, ServerContext
from airflow_mlserver.server.errors import ApiError
from airflow_mlserver.server.middleware import ServerMiddleware
from airflow_mlserver.server.runner import BatchRunner
from airflow_mlserver.server.store import Store
from airflow_mlserver.server.workers import WorkerPool


def create_app(config: ServerConfig) -> FastAPI:
    """Build the application; the worker pool starts and unfinished batches resume at startup."""
    store = Store(config.data_dir)
    pool = WorkerPool(config.workers, config.execution_timeout, home=str(config.data_dir))
    runner = BatchRunner(store, pool)
    ctx = ServerContext(config=config, store=store, pool=pool, runner=runner)
    app = FastAPI(
        title="airflow-mlserver local Machine Learning Server",
        version=__version__,
        lifespan=_lifespan,
        exception_handlers={
            ApiError: _api_error,
            RequestValidationError: _validation_error,
            StarletteHTTPException: _http_error,
            Exception: _unexpected_error,
        },
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    app.include_router(_status_router)
    for module in (auth, services, sessions, consume, batch):
        app.include_router(module.router)
    app.add_middleware(ServerMiddleware, ctx=ctx)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the worker pool and resume unfinished batches; stop them and close the store at shutdown."""
    ctx: ServerContext = app.state.ctx
    await ctx.pool.start()
    ctx.store.purge_tokens(time.time())
    ctx.runner.resume_unfinished()
    try:
        yield
    finally:
        await ctx.runner.stop()
        ctx.pool.close()
        ctx.store.close()


# -- error answers: always the contract's JSON error ------------------------------------------------------------


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    error = ApiError(400, f"Invalid request: {where}: {first.get('msg', 'invalid value')}.")
    return JSONResponse(error.body(), status_code=400)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    path = shortened(request.url.path)
    if exc.status_code == 404:
        message = f"No route for {request.method} {path}: see the API reference for valid routes."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {path}."
    else:
        message = shortened(str(exc.detail))
    return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A failure no route foresaw: still the contract's JSON error (the traceback goes to the log)."""
    error = ApiError(
        500,
        f"The server failed on {request.method} {shortened(request.url.path)} ({type(exc).__name__}): "
        "see its log.",
    )
    return JSONResponse(error.body(), status_code=500)


# -- /status ----------------------------------------------------------------------------------------------------

_status_router = APIRouter()


@_status_router.get("/status")
async def status(ctx: Ctx) -> dict[str, Any]:
    pool = ctx.pool
    alive = pool.alive()
    workers_ok = alive >= pool.size
    return {
        "statusCode": "pass" if workers_ok else "warn",
        "details": {
            "version": __version__,
            "uptimeSeconds": round(time.time() - ctx.started, 1),
            "workers": pool.size,
            "busyWorkers": pool.busy,
            "maxParallelCount": ctx.config.max_parallel_count,
        },
        "components": {
            "database": {"statusCode": "pass", "details": {"path": str(ctx.store.db_path)}},
            "computeNodes": {
                "statusCode": "pass" if workers_ok else "warn",
                "details": {"alive": alive, "expected": pool.size},
            },
        },
    }
