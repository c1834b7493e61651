"""The plugin's FastAPI app, mounted on Airflow's API server at ``/mlserver``.

Every route needs a logged-in Airflow user (the UI's session cookie, or a bearer token); the batch routes also
need read access to the DAG's task instances, as the task instance page itself does. Routes are plain ``def``:
FastAPI runs them in its thread pool, so reading the ML Server never blocks the API server's event loop.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.ui import docs
from airflow_mlserver.ui.batch_view import BatchView, TaskInstanceRef, build_view, read_airflow_records
from airflow_mlserver.ui.pages import templates

#: Seconds between refreshes of the page while the batch runs.
REFRESH_SECONDS = 10

app = FastAPI(title="Machine Learning Server provider", docs_url=None, redoc_url=None, openapi_url=None)
app.include_router(docs.router)

CanReadTaskInstances = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))


def _view(dag_id: str, run_id: str, task_id: str, map_index: str, session: Any) -> BatchView:
    # The UI leaves the {MAP_INDEX} placeholder as it is for a task that is not mapped.
    index = int(map_index) if map_index.lstrip("-").isdigit() else -1
    ref = TaskInstanceRef(dag_id, run_id, task_id, index)
    return build_view(ref, read_airflow_records(ref, session), lambda conn_id: MLServerHook(conn_id))


@app.get("/batch/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=[CanReadTaskInstances])
def batch_page(dag_id: str, run_id: str, task_id: str, map_index: str, session: SessionDep) -> HTMLResponse:
    """The batch view of a task instance, as a page (the task instance's "ML Server batch" tab)."""
    view = _view(dag_id, run_id, task_id, map_index, session)
    html = templates.get_template("batch.html").render(
        view=view, refresh=None if view.finished else REFRESH_SECONDS
    )
    return HTMLResponse(html)


@app.get("/api/batch/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=[CanReadTaskInstances])
def batch_json(dag_id: str, run_id: str, task_id: str, map_index: str, session: SessionDep) -> JSONResponse:
    """The same view as JSON, for scripts and tests."""
    return JSONResponse(_view(dag_id, run_id, task_id, map_index, session).to_json())
