"""DAGs the services operators' tests run with ``dag.test()``: publish a service, then score with what it published."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.operators.services import MLServerDeleteServiceOperator, MLServerPublishServiceOperator

PARAMS = {"service": "published", "code": "y = x * 2\n", "records": "", "output": ""}

with DAG(
    "mlserver_test_publish_then_score",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
) as publish_then_score:
    publish = MLServerPublishServiceOperator(
        task_id="publish",
        service_name="{{ params.service }}",
        code="{{ params.code }}",
        inputs={"x": "numeric"},
        outputs={"y": "numeric"},
        description="Doubles x.",
    )
    score = MLServerBatchOperator(
        task_id="score",
        service_name="{{ ti.xcom_pull(task_ids='publish', key='service_name') }}",
        service_version="{{ ti.xcom_pull(task_ids='publish')['service_version'] }}",
        records="{{ params.records }}",
        output_path="{{ params.output }}",
        output_format="csv",
        poll_interval=0.3,
    )
    tidy = MLServerDeleteServiceOperator(task_id="tidy", service_name="{{ params.service }}", keep_newest=1)
    publish >> score >> tidy
