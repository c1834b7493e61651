"""The R seed's workflow as a pipeline: publish an R service with its model, score mtcars from CSV and TSV.

1. ``publish_model`` fits ``carsModel <- glm(am ~ hp + wt, data = mtcars, family = binomial)`` in R
   (``Rscript``, where the task runs), and publishes (or replaces) the R web service ``mtService``
   ``v1.0.0``: the seed's ``manualTransmission(hp, wt)``, which draws ``Histogram.png`` and predicts with
   ``carsModel``, sent as a model object (RDS). Then it consumes it once: ``manualTransmission(120, 2.8)``
   must be the seed's 0.6418125.
2. ``score_csv`` and ``score_tsv`` score the 32 cars in batch, read as the seed reads them (``mtcars.csv``,
   and ``mtcars.tsv`` with a tab separator), each into a Parquet file of its own.
3. ``collect_csv_artifacts`` and ``collect_tsv_artifacts`` copy each record's ``Histogram.png`` into object
   storage, one folder per record number, with a manifest.
4. ``summary`` checks that both files scored the same and prints a few rows.

Needs R where the tasks run (``Rscript``) and in the server's workers (Debian: ``r-base-core``; the local
server runs R through ``rpy2``). Storage: ``MLSERVER_EXAMPLES_STORAGE``, as the other examples.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mtcars_r_service as r_service
from _common import RUN_STAMP, STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator

with DAG(
    "mlserver_r_manual_transmission",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mlserver", "example", "R"],
    doc_md=__doc__,
):

    @task
    def publish_model() -> float:
        from airflow_mlserver.hooks.mlserver import MLServerHook

        hook = MLServerHook()
        r_service.publish(hook)
        return r_service.check(hook)

    published = publish_model()
    scores: dict[str, MLServerBatchOperator] = {}
    for fmt, records in (("csv", r_service.MTCARS_CSV), ("tsv", r_service.MTCARS_TSV)):
        score = MLServerBatchOperator(
            task_id=f"score_{fmt}",
            service_name=r_service.SERVICE_NAME,
            service_version=r_service.SERVICE_VERSION,
            records=f"file://{records}",  # the format comes from the suffix: .csv, or .tsv (tab-separated)
            output_path=f"{STORAGE}/r/{RUN_STAMP}/mtcars-{fmt}.parquet",
            output_conn_id=STORAGE_CONN_ID,
            parallel_count=10,
            poll_interval=2,
            deferrable=True,
            retries=2,  # a retry reattaches to its execution: nothing is scored twice (see the README)
            retry_delay=timedelta(seconds=10),
        )
        collect = MLServerArtifactsToObjectStorageOperator(
            task_id=f"collect_{fmt}_artifacts",
            service_name=r_service.SERVICE_NAME,
            service_version=r_service.SERVICE_VERSION,
            execution_ids=score.output,
            file_names=["Histogram.png"],
            dest=f"{STORAGE}/r/{RUN_STAMP}/artifacts-{fmt}",  # <record>/Histogram.png, and manifest.json
            dest_conn_id=STORAGE_CONN_ID,
            max_concurrency=4,
        )
        published >> score >> collect
        scores[fmt] = score

    @task
    def summary(check: float, csv: dict[str, Any], tsv: dict[str, Any]) -> dict[str, Any]:
        import pandas as pd

        frames = {}
        for fmt, scores in (("csv", csv), ("tsv", tsv)):
            with ObjectStoragePath(scores["output_uri"], conn_id=STORAGE_CONN_ID).open("rb") as handle:
                frames[fmt] = pd.read_parquet(
                    handle, columns=["model", "hp", "wt", "am", "answer", "success"]
                )
        pd.testing.assert_frame_equal(frames["csv"], frames["tsv"])  # the same cars, whichever file
        frame = frames["csv"]
        print(f"manualTransmission(120, 2.8) = {check:.7f}")
        print(f"Scored {len(frame)} cars from mtcars.csv and from mtcars.tsv, the same answers")
        table = (
            frame.head(8).rename(columns={"answer": "P(manual)"}).to_string(index=False, float_format="%.4f")
        )
        print(table)
        return {"check": check, "csv": csv["output_uri"], "tsv": tsv["output_uri"], "cars": len(frame)}

    summary(published, scores["csv"].output, scores["tsv"].output)
