"""The plugin's FastAPI app, mounted on Airflow's API server at ``/mlserver``.

Every route needs a logged-in Airflow user (the UI's session cookie, or a bearer token); the batch routes also
need read access to the DAG's task instances, as the task instance page itself does. A browser that is not
logged in is sent to Airflow's login page, which brings it back. Routes are plain ``def``: FastAPI runs them in
its thread pool, so reading the ML Server never blocks the API server's event loop.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.ui import docs, thumbnails
from airflow_mlserver.ui.airflow_records import (
    TaskInstanceNotFound,
    TaskInstanceRef,
    find_task_instance,
    read_airflow_records,
)
from airflow_mlserver.ui.batch_view import BatchView, build_view
from airflow_mlserver.ui.pages import templates

#: Seconds between refreshes of the page, until the task instance ends.
REFRESH_SECONDS = 10
#: A page waits this long for each answer of the server, and asks again once: a server that is down is said so
#: on the page within seconds, rather than after the tasks' own patient retries.
SERVER_TIMEOUT = 10.0
SERVER_RETRIES = 1

app = FastAPI(title="Machine Learning Server provider", docs_url=None, redoc_url=None, openapi_url=None)
app.include_router(docs.router)
app.include_router(thumbnails.router)

CanReadTaskInstances = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
Page = Query(1, ge=1, le=1_000_000, description="The page of the artifacts lists.")


@app.exception_handler(HTTPException)
async def login_first(request: Request, exc: HTTPException) -> Response:
    """A browser that is not logged in goes to Airflow's login page, and comes back here after it."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        path = (
            request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        )  # as the browser sent it
        back = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=back), status_code=303)
    return await http_exception_handler(request, exc)


def _ref(dag_id: str, run_id: str, task_id: str, map_index: str) -> TaskInstanceRef:
    # The UI leaves the {MAP_INDEX} placeholder as it is for a task that is not mapped.
    index = int(map_index) if map_index.lstrip("-").isdigit() else -1
    return TaskInstanceRef(dag_id, run_id, task_id, index)


def _view(ref: TaskInstanceRef, session: Any, page: int) -> BatchView:
    """The view, or :class:`TaskInstanceNotFound`."""
    task = find_task_instance(ref, session)
    records = read_airflow_records(ref, session)
    hook_for = lambda conn_id: MLServerHook(conn_id, timeout=SERVER_TIMEOUT, max_retries=SERVER_RETRIES)  # noqa: E731
    return build_view(ref, task, records, hook_for, page=page)


@app.get("/batch/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=[CanReadTaskInstances])
def batch_page(
    dag_id: str, run_id: str, task_id: str, map_index: str, session: SessionDep, page: int = Page
) -> HTMLResponse:
    """The batch view of a task instance, as a page (the task instance's "ML Server batch" tab)."""
    ref = _ref(dag_id, run_id, task_id, map_index)
    try:
        view = _view(ref, session, page)
    except TaskInstanceNotFound as exc:
        html = templates.get_template("missing.html").render(ref=ref, reason=str(exc))
        return HTMLResponse(html, status_code=404)
    html = templates.get_template("batch.html").render(
        view=view,
        refresh=REFRESH_SECONDS if view.live else None,
        thumbnails=lambda m: thumbnails.view_thumbnails(view, m),
    )
    return HTMLResponse(html)


@app.get("/api/batch/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=[CanReadTaskInstances])
def batch_json(
    dag_id: str, run_id: str, task_id: str, map_index: str, session: SessionDep, page: int = Page
) -> JSONResponse:
    """The same view as JSON, for scripts and tests."""
    try:
        return JSONResponse(_view(_ref(dag_id, run_id, task_id, map_index), session, page).to_json())
    except TaskInstanceNotFound as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
