"""The DAGs the batch view's browser tests run: a chunked batch with failed records rescored once, and artifacts;
a mapped batch whose artifacts one task copies, beside a plain Python task; a batch that fails before it starts."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

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


with DAG(
    "mlserver_test_ui_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    render_template_as_native_obj=True,
    params={"inputs": [], "dest": ""},
) as ui_mapped:
    # Two mapped batch tasks of two chunks each; one artifacts task copies the files of all four executions.
    mapped = MLServerBatchOperator.partial(
        task_id="score",
        service_name="uiscorer",
        service_version="v1",
        chunk_size=30,
        max_active_executions=2,
        poll_interval=0.3,
        deferrable=True,
    ).expand(records=["{{ params.inputs[0] }}", "{{ params.inputs[1] }}"])
    collect_all = MLServerArtifactsToObjectStorageOperator(
        task_id="collect_artifacts",
        service_name="uiscorer",
        service_version="v1",
        execution_ids="{{ ti.xcom_pull(task_ids='score', key='execution_ids') }}",
        dest="{{ params.dest }}",
    )

    @task
    def summary() -> dict[str, str]:
        """A plain Python task, not one of this provider's, returning keys like an artifacts task's."""
        return {"results": "file:///tmp/results.parquet", "manifest": "file:///tmp/artifacts/manifest.json"}

    mapped >> collect_all >> summary()


with DAG(
    "mlserver_test_ui_nostart",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
) as ui_nostart:
    # Fails before it starts any execution: its records file does not exist.
    MLServerBatchOperator(
        task_id="score",
        service_name="uiscorer",
        service_version="v1",
        records="file:///nonexistent/records.csv",
        poll_interval=0.3,
    )
