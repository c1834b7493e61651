"""Wait for a batch execution started outside Airflow, then collect its artifacts.

Trigger it with the execution's id, e.g. ``airflow dags trigger mlserver_external_batch_sensor -c
'{"execution_id": "..."}'``. The sensor waits in ``reschedule`` mode (no worker slot held between pokes)
until the execution is ``Complete``; a ``Failed`` or canceled execution fails it. Then every artifact of the
execution is copied into object storage.
"""

from __future__ import annotations

from datetime import datetime

import mtcars_service
from _common import STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, Param

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.sensors.batch import MLServerBatchSensor

with DAG(
    "mlserver_external_batch_sensor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "execution_id": Param("", type="string", minLength=1, description="The batch execution to wait for."),
        "service_name": Param(mtcars_service.SERVICE_NAME, type="string"),
        "service_version": Param(mtcars_service.SERVICE_VERSION, type="string"),
    },
    tags=["mlserver", "example"],
    doc_md=__doc__,
):
    wait = MLServerBatchSensor(
        task_id="wait_for_batch",
        service_name="{{ params.service_name }}",
        service_version="{{ params.service_version }}",
        execution_id="{{ params.execution_id }}",
        mode="reschedule",
        poke_interval=5,
        timeout=6 * 3600,
    )

    collect = MLServerArtifactsToObjectStorageOperator(
        task_id="collect_artifacts",
        service_name="{{ params.service_name }}",
        service_version="{{ params.service_version }}",
        execution_id="{{ params.execution_id }}",
        dest=f"{STORAGE}/external",
        dest_conn_id=STORAGE_CONN_ID,
        max_concurrency=4,
    )

    wait >> collect
