"""The event-driven example (``dags_examples/mlserver_collect_finished_batches.py``) as the deployment of
``tests/test_deployment.py`` runs it: the same asset watcher and DAG, on the test service ``deploy_watch`` v1,
polled every second, copying into ``$AIRFLOW_HOME/finished``."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.triggers.executions import MLServerBatchExecutionsTrigger

SERVICE, VERSION = "deploy_watch", "v1"

FINISHED_BATCHES = Asset(
    name="mlserver_deploy_watch_finished_batches",
    uri=f"mlserver://{SERVICE}/{VERSION}/batch-executions",
    watchers=[
        AssetWatcher(
            name="mlserver_deploy_watch_batch_executions",
            trigger=MLServerBatchExecutionsTrigger(
                service_name=SERVICE,
                service_version=VERSION,
                mlserver_conn_id="mlserver_default",
                poll_interval=1,
            ),
        )
    ],
)

with DAG(
    "mlserver_deploy_collect_finished",
    schedule=[FINISHED_BATCHES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
):

    @task
    def finished_executions(triggering_asset_events: Any = None) -> list[str]:
        complete = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                finished = (event.extra or {}).get("payload") or {}
                print(f"Batch execution {finished.get('execution_id')} finished {finished.get('state')}")
                if str(finished.get("state", "")).lower() == "complete":
                    complete.append(finished["execution_id"])
        return complete

    MLServerArtifactsToObjectStorageOperator.partial(
        task_id="collect_artifacts",
        service_name=SERVICE,
        service_version=VERSION,
        dest=f"file://{os.environ.get('AIRFLOW_HOME', '/tmp')}/finished",
    ).expand(execution_id=finished_executions())
