"""The seed workflow as a pipeline: train the model, publish it, score the mtcars cars in batch, keep what it wrote.

1. ``train`` fits a logistic regression ``am ~ hp + wt`` on mtcars, as R's ``glm`` fits it
   (``manualTransmission(120, 2.8)`` is 0.6418125), and returns its three coefficients.
2. ``publish`` (``MLServerPublishServiceOperator``) publishes ``TxService`` 1.0: the code of ``mtcars_service``,
   with the coefficients as the model object ``coefficients`` (a variable when the code runs). The version
   carries the content's digest, so a rerun with the same model and code publishes nothing; other content (the
   code edited, or a 1.0 published otherwise) replaces 1.0 (``if_exists="replace"``). The version is fixed
   (``mlserver_collect_finished_batches`` watches 1.0), so nothing is retired: there is no delete step.
3. ``score`` sends the 32 cars as one asynchronous batch (``parallelCount`` 10) to the version ``publish``
   answered, defers while the server works, and writes one row per car (inputs, the probability ``answer``,
   ``success``) as Parquet.
4. ``collect_artifacts`` copies the files each record wrote (``answer.csv``, and ``histogram.png`` for the
   first cars) into object storage, one folder per record number (the results' ``record``), with a manifest.
5. ``summary`` prints whether this run published, and a table of the results.

Daily (no catch-up), one run at a time. Storage: ``MLSERVER_EXAMPLES_STORAGE`` (default
``file:///tmp/airflow-mlserver-examples``), with the connection ``MLSERVER_EXAMPLES_STORAGE_CONN_ID`` for remote
stores; each run writes its own folders, named by ``run_after``. The server: connection ``mlserver_default``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mtcars_service
from _common import MTCARS_SCORES, RUN_STAMP, STORAGE, STORAGE_CONN_ID, published_words
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.operators.services import MLServerPublishServiceOperator

with DAG(
    "mlserver_batch_scoring",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mlserver", "example"],
    doc_md=__doc__,
):

    @task
    def train() -> dict[str, list[float]]:
        """The model objects: ``{"coefficients": [intercept, hp, wt]}``."""
        return {"coefficients": mtcars_service.train()}

    publish = MLServerPublishServiceOperator(
        task_id="publish",
        service_name=mtcars_service.SERVICE_NAME,
        service_version=mtcars_service.SERVICE_VERSION,
        model_objects=train(),
        if_exists="replace",
        **mtcars_service.service_arguments(),
    )

    score = MLServerBatchOperator(
        task_id="score",
        service_name=mtcars_service.SERVICE_NAME,
        service_version=publish.output["service_version"],
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
        service_version=publish.output["service_version"],
        execution_ids=score.output,  # the batch's summary: its executions (one, or one per chunk)
        dest=f"{STORAGE}/artifacts/{RUN_STAMP}",  # <record>/answer.csv, ..., and manifest.json
        dest_conn_id=STORAGE_CONN_ID,
        max_concurrency=4,
    )

    @task
    def summary(
        published: dict[str, Any], scores: dict[str, Any], artifacts: dict[str, Any]
    ) -> dict[str, Any]:
        import pandas as pd

        with ObjectStoragePath(scores["output_uri"], conn_id=STORAGE_CONN_ID).open("rb") as handle:
            frame = pd.read_parquet(handle, columns=["model", "hp", "wt", "am", "answer", "success"])
        table = frame.rename(columns={"answer": "P(manual)"}).to_string(index=False, float_format="%.4f")
        print(published_words(published))
        print(
            f"Scored {scores['total']} cars ({scores['failed']} failed) with execution {scores['execution_ids'][0]}"
        )
        print(table)
        print(f"Results:   {scores['output_uri']}")
        copied, skipped = artifacts["copied"], artifacts["skipped"]
        # flushed here: the whole table is in the task's log before Airflow's "Post Execute" lines
        print(
            f"Artifacts: {copied} copied, {skipped} already there, manifest {artifacts['manifest']}",
            flush=True,
        )
        return {
            "published": published["published"],
            "results": scores["output_uri"],
            "manifest": artifacts["manifest"],
            "cars": len(frame),
        }

    summary(publish.output, score.output, collect.output)
