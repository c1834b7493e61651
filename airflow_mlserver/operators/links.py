"""The tasks' extra link: the task instance's "ML Server batch" tab, inside Airflow's UI.

A Machine Learning Server has no web page for a batch execution, and every route of its API needs a bearer
token that a browser does not have; so the link leads to the plugin's view (``airflow_mlserver.ui``), which
reads the server on the API server's side, behind Airflow's login. The link opens the view as the tab of the
task instance page (Airflow's navigation around it), not the bare page.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink, conf

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the plugin's app is mounted on the API server.
URL_PREFIX = "/mlserver"
#: The route of the task instance tab the plugin adds (Airflow's UI serves it at ``.../plugin/<route>``).
TAB_ROUTE = "mlserver-batch"


def batch_view_path(dag_id: str, run_id: str, task_id: str, map_index: str | int) -> str:
    """The batch view of one task instance (``map_index`` may be the UI's ``{MAP_INDEX}`` placeholder)."""
    parts = (urllib.parse.quote(str(p), safe="{}") for p in (dag_id, run_id, task_id, map_index))
    return f"{URL_PREFIX}/batch/" + "/".join(parts)


def batch_tab_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The task instance's "ML Server batch" tab in Airflow's UI (a mapped one's under its map index)."""
    # as Airflow's UI writes its own tab links (a run id keeps its ":" and "+"), so that the tab shows as chosen
    dag, run, task = (urllib.parse.quote(str(p), safe=":+@") for p in (dag_id, run_id, task_id))
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return f"/dags/{dag}/runs/{run}/tasks/{task}{mapped}/plugin/{TAB_ROUTE}"


class MLServerBatchLink(BaseOperatorLink):
    """ "ML Server batch": the task instance's tab of the batch view (executions, counts, failures, artifacts)."""

    name = "ML Server batch"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # below the UI's own base path, if it is served under one ([api] base_url)
        base = urllib.parse.urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
        return base + batch_tab_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
