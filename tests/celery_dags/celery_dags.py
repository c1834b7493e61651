"""The DAGs of ``tests/test_deployment_celery.py`` beside the examples: a chunked batch scored inside the worker,
and the same batch deferred between its chunks.

In ``mlserver_celery_chunks``, ``deferrable=False`` keeps the task on its Celery worker for the whole batch, so
that killing that worker always hits a running batch task; its chunks are the executions that the retry must
reattach to. ``mlserver_celery_faults`` defers while its chunks run (``max_active_executions`` at once), as long
batches should: the fault tests restart or kill one component of the deployment while it runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator

#: Records per chunk (per batch execution) and chunks scored at once.
CHUNK_SIZE, MAX_ACTIVE = 30, 2


def _chunked(dag_id: str, service: str, deferrable: bool, retries: int, retry_delay: float) -> DAG:
    """A DAG of one batch task scoring ``params.records`` in chunks of :data:`CHUNK_SIZE`, :data:`MAX_ACTIVE` at
    once, on ``service``."""
    with DAG(
        dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        render_template_as_native_obj=True,
        params={"service": service, "version": "v1", "records": "", "output": ""},
    ) as dag:
        MLServerBatchOperator(
            task_id="score",
            service_name="{{ params.service }}",
            service_version="{{ params.version }}",
            records="{{ params.records }}",
            output_path="{{ params.output }}",
            chunk_size=CHUNK_SIZE,
            max_active_executions=MAX_ACTIVE,
            parallel_count=2,
            poll_interval=1,
            deferrable=deferrable,
            retries=retries,
            retry_delay=timedelta(seconds=retry_delay),
        )
    return dag


chunks = _chunked("mlserver_celery_chunks", "celery_chunks", deferrable=False, retries=2, retry_delay=1)

#: The DAG of the fault tests: the same chunks, deferred between them, retried when a fault fails a try.
FAULTS_DAG = "mlserver_celery_faults"
faults = _chunked(FAULTS_DAG, "celery_faults", deferrable=True, retries=3, retry_delay=2)
