"""The seed workflow as a pipeline: publish the model, score the mtcars cars in batch, keep what it wrote.

1. ``publish_model`` publishes ``TxService`` 1.0 (a logistic regression ``am ~ hp + wt`` fitted on mtcars, as
   R's ``glm`` fits it: ``manualTransmission(120, 2.8)`` is 0.6418125) unless the server already has it.
2. ``score`` sends the 32 cars as one asynchronous batch (``parallelCount`` 10), defers while the server works,
   and writes one row per car (inputs, the probability ``answer``, ``success``) as Parquet.
3. ``collect_artifacts`` copies the files each record wrote (``answer.csv``, and ``histogram.png`` for the
   first cars) into object storage, one folder per record number (the results' ``record``), with a manifest.
4. ``summary`` prints a table of the results.

Storage: ``MLSERVER_EXAMPLES_STORAGE`` (default ``file:///tmp/airflow-mlserver-examples``), with the
connection ``MLSERVER_EXAMPLES_STORAGE_CONN_ID`` for remote stores. The server: connection ``mlserver_default``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mtcars_service
from _common import MTCARS_SCORES, RUN_STAMP, STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator

with DAG(
    "mlserver_batch_scoring",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mlserver", "example"],
    doc_md=__doc__,
):

    @task
    def publish_model() -> str:
        from airflow_mlserver.hooks.mlserver import MLServerHook

        return mtcars_service.publish_if_absent(MLServerHook())

    score = MLServerBatchOperator(
        task_id="score",
        service_name=mtcars_service.SERVICE_NAME,
        service_version=mtcars_service.SERVICE_VERSION,
        records=f"file://{mtcars_service.MTCARS}",
        output_path=f"{STORAGE}/scores/{RUN_STAMP}/mtcars.parquet",
        output_conn_id=STORAGE_CONN_ID,
        parallel_count=10,
        poll_interval=2,
        deferrable=True,
        retries=2,  # a retry reattaches to its execution: nothing is scored twice (see the README)
        retry_delay=timedelta(seconds=10),
        outlets=[MTCARS_SCORES],
    )

    collect = MLServerArtifactsToObjectStorageOperator(
        task_id="collect_artifacts",
        service_name=mtcars_service.SERVICE_NAME,
        service_version=mtcars_service.SERVICE_VERSION,
        execution_ids=score.output,  # the batch's summary: its executions (one, or one per chunk)
        dest=f"{STORAGE}/artifacts/{RUN_STAMP}",  # <record>/answer.csv, ..., and manifest.json
        dest_conn_id=STORAGE_CONN_ID,
        max_concurrency=4,
    )

    @task
    def summary(scores: dict[str, Any], artifacts: dict[str, Any]) -> dict[str, Any]:
        import pandas as pd

        with ObjectStoragePath(scores["output_uri"], conn_id=STORAGE_CONN_ID).open("rb") as handle:
            frame = pd.read_parquet(handle, columns=["model", "hp", "wt", "am", "answer", "success"])
        table = frame.rename(columns={"answer": "P(manual)"}).to_string(index=False, float_format="%.4f")
        print(
            f"Scored {scores['total']} cars ({scores['failed']} failed) with execution {scores['execution_ids'][0]}"
        )
        print(table)
        print(f"Results:   {scores['output_uri']}")
        copied, skipped = artifacts["copied"], artifacts["skipped"]
        print(f"Artifacts: {copied} copied, {skipped} already there, manifest {artifacts['manifest']}")
        return {"results": scores["output_uri"], "manifest": artifacts["manifest"], "cars": len(frame)}

    publish_model() >> score >> collect
    summary(score.output, collect.output)
