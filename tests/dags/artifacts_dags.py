"""The DAGs the artifacts operator test runs with ``dag.test()``.

``artifacts_to_storage`` copies one execution's text artifacts to S3; ``artifacts_of_a_mapped_task`` copies the
artifacts of every execution of a mapped task, from its ``execution_ids`` XCom, by record number.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator

with DAG(
    "artifacts_to_storage",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"execution_id": "", "bucket": "artifacts"},
) as dag:
    MLServerArtifactsToObjectStorageOperator(
        task_id="copy",
        service_name="artsvc",
        service_version="1.0",
        execution_id="{{ params.execution_id }}",
        dest="s3://{{ params.bucket }}/dag/{{ dag.dag_id }}",
        dest_conn_id="s3_artifacts",
        indexes="{{ '0-19' }}",
        file_names=["*.txt"],
        mlserver_conn_id="mlserver_artifacts",
        outlets=[Asset("s3://artifacts/dag/artifacts_to_storage")],
        max_concurrency=4,
        poll_interval=0.3,
    )


with DAG(
    "artifacts_of_a_mapped_task",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"chunks": [], "dest": "/tmp", "indexes": "4-9"},
) as mapped_dag:

    @task
    def chunks(params: dict[str, Any]) -> list[list[str]]:
        """The execution ids each map index of the batch task started."""
        return list(params["chunks"])

    @task
    def score_chunk(ids: list[str], ti: Any = None) -> None:
        """Stands for a mapped MLServerBatchOperator: pushes its executions' ids under the same key."""
        ti.xcom_push(key="execution_ids", value=ids)

    scored = score_chunk.expand(ids=chunks())
    MLServerArtifactsToObjectStorageOperator(
        task_id="copy",
        service_name="artsvc",
        service_version="1.0",
        execution_ids=scored["execution_ids"],  # a list per map index, in map index order
        dest="file://{{ params.dest }}",
        indexes="{{ params.indexes }}",
        mlserver_conn_id="mlserver_artifacts",
        poll_interval=0.3,
    )
