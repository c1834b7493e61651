"""The Airflow plugin: the ``/mlserver`` app on the API server, and the batch view as a task instance tab.

Every task process loads all plugins (for their macros), so this module imports nothing of the API server: the
app (:mod:`airflow_mlserver.ui.app`, which imports Airflow's FastAPI app, about 1.5 s) is imported only when
the API server reads ``fastapi_apps``.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_mlserver.operators.links import TAB_ROUTE, URL_PREFIX, batch_view_path


class _FastAPIApps:
    """``fastapi_apps`` read on access: the ``/mlserver`` app, imported then and not before."""

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        from airflow_mlserver.ui.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Machine Learning Server"}]


class MLServerPlugin(AirflowPlugin):
    """Adds an "ML Server batch" tab to every task instance page, and serves this provider's documentation.

    The tab shows, for a task of this provider, each batch execution's state, counts, rate and ETA, the first
    failed records and the artifacts manifest; other tasks' tabs say that they started no batch.
    """

    name = "mlserver"
    fastapi_apps = _FastAPIApps()  # type: ignore[assignment]  # a list, built when the API server reads it
    external_views = [
        {
            # no-break spaces: the label stays on one line where the UI wraps the tabs' labels (mapped tasks)
            "name": "ML\u00a0Server\u00a0batch",
            # the UI fills in the placeholders
            "href": batch_view_path("{DAG_ID}", "{RUN_ID}", "{TASK_ID}", "{MAP_INDEX}"),
            "destination": "task_instance",
            "url_route": TAB_ROUTE,
        }
    ]
