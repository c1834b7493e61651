"""DAGs run by the real Airflow deployment of ``tests/test_deployment.py`` (scheduler, triggerer, API server)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator

PARAMS = {"service": "deploy_slow", "version": "v1", "records": "", "output": "", "conn": "mlserver_default"}

for dag_id, deferrable in (("mlserver_deploy_in_worker", False), ("mlserver_deploy_deferrable", True)):
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=False,
        render_template_as_native_obj=True,
        params=PARAMS,
    ) as dag:
        MLServerBatchOperator(
            task_id="score",
            service_name="{{ params.service }}",
            service_version="{{ params.version }}",
            records="{{ params.records }}",
            output_path="{{ params.output }}",
            mlserver_conn_id="{{ params.conn }}",
            parallel_count=2,
            poll_interval=1,
            deferrable=deferrable,
            retries=2,
            retry_delay=timedelta(seconds=1),
        )
    globals()[dag_id] = dag
