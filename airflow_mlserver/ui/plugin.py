"""The Airflow plugin: the ``/mlserver`` app on the API server, and the batch view as a task instance tab."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_mlserver.operators.links import URL_PREFIX
from airflow_mlserver.ui.app import app, task_instance_href


class MLServerPlugin(AirflowPlugin):
    """Adds an "ML Server batch" tab to every task instance page, and serves this provider's documentation.

    The tab shows, for a task of this provider, each batch execution's state, counts, rate and ETA, the first
    failed records and the artifacts manifest; other tasks' tabs say that they started no batch.
    """

    name = "mlserver"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Machine Learning Server"}]
    external_views = [
        {
            "name": "ML Server batch",
            "href": task_instance_href(),
            "destination": "task_instance",
            "url_route": "mlserver-batch",
        }
    ]
