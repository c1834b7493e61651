"""The DAG the batch view's browser tests run: a chunked batch with failed records rescored once, and artifacts."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator

with DAG(
    "mlserver_test_ui_batch",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    params={"records": "", "output": "", "dest": ""},
) as ui_batch:
    score = MLServerBatchOperator(
        task_id="score",
        service_name="uiscorer",
        service_version="v1",
        records="{{ params.records }}",
        output_path="{{ params.output }}",
        chunk_size=7,
        max_active_executions=2,
        max_failed_records=10,
        rescore_failed_records=1,
        poll_interval=0.3,
        deferrable=True,
    )
    collect = MLServerArtifactsToObjectStorageOperator(
        task_id="collect_artifacts",
        service_name="uiscorer",
        service_version="v1",
        execution_id="{{ ti.xcom_pull(task_ids='score', key='execution_ids')[0] }}",
        dest="{{ params.dest }}",
    )
    score >> collect
