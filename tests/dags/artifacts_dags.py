"""The DAG the artifacts operator test runs with ``dag.test()``: copy a batch's text artifacts to S3."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset

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
