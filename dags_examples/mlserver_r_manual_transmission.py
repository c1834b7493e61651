"""The R seed's workflow as a pipeline: fit the model in R, publish it as an R service, score mtcars from CSV and TSV.

1. ``fit_model`` fits ``carsModel <- glm(am ~ hp + wt, data = mtcars, family = binomial)`` in R (``Rscript``,
   where the task runs) and writes what ``saveRDS`` wrote to object storage (``r/<run>/carsModel.rds``).
2. ``publish`` (``MLServerPublishServiceOperator``, ``runtime_type="R"``) publishes the R web service
   ``mtService`` ``v1.0.0``: the seed's ``manualTransmission(hp, wt)``, which draws ``Histogram.png`` and
   predicts with ``carsModel``, that file being the model object ``carsModel``. The version carries the
   content's digest (R writes the same RDS bytes for the same fit), so a rerun publishes nothing; a model that
   differs (another R's RDS) replaces ``v1.0.0`` (``if_exists="replace"``), as the seed republishes it. The
   version is fixed, so nothing is retired: there is no delete step.
3. ``check`` consumes the service once: ``manualTransmission(120, 2.8)`` must be the seed's 0.6418125, else
   nothing is scored.
4. ``score_csv`` and ``score_tsv`` score the 32 cars in batch, read as the seed reads them (``mtcars.csv``,
   and ``mtcars.tsv`` with a tab separator), each into a Parquet file of its own.
5. ``collect_csv_artifacts`` and ``collect_tsv_artifacts`` copy each record's ``Histogram.png`` into object
   storage, one folder per record number, with a manifest.
6. ``summary`` says whether this run published, checks that both files scored the same and prints a few rows.

Daily (no catch-up), one run at a time. Needs R where the tasks run (``Rscript``) and in the server's workers
(Debian: ``r-base-core``; the local server runs R through ``rpy2``). Storage: ``MLSERVER_EXAMPLES_STORAGE``, as
the other examples; each run writes its own folder, named by ``run_after``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mtcars_r_service as r_service
from _common import RUN_STAMP, STORAGE, STORAGE_CONN_ID, published_words, run_stamp
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.operators.services import MLServerPublishServiceOperator

with DAG(
    "mlserver_r_manual_transmission",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["mlserver", "example", "R"],
    doc_md=__doc__,
):

    @task
    def fit_model(dag_run: Any) -> dict[str, str]:
        """The model files: ``{"carsModel": <URI of the RDS file>}``."""
        target = ObjectStoragePath(f"{STORAGE}/r/{run_stamp(dag_run)}/carsModel.rds", conn_id=STORAGE_CONN_ID)
        return {"carsModel": r_service.save_model(target)}

    publish = MLServerPublishServiceOperator(
        task_id="publish",
        service_name=r_service.SERVICE_NAME,
        service_version=r_service.SERVICE_VERSION,
        model_paths=fit_model(),
        model_conn_id=STORAGE_CONN_ID,
        if_exists="replace",
        **r_service.SERVICE_ARGUMENTS,
    )

    @task
    def check(published: dict[str, Any]) -> float:
        """The seed's check: ``manualTransmission(120, 2.8)`` is 0.6418125 (to 7 digits)."""
        from airflow_mlserver.hooks.mlserver import MLServerHook

        return r_service.check(MLServerHook(), published["service_name"], published["service_version"])

    checked = check(publish.output)
    scores: dict[str, MLServerBatchOperator] = {}
    for fmt, records in (("csv", r_service.MTCARS_CSV), ("tsv", r_service.MTCARS_TSV)):
        score = MLServerBatchOperator(
            task_id=f"score_{fmt}",
            service_name=r_service.SERVICE_NAME,
            service_version=publish.output["service_version"],
            records=f"file://{records}",  # the format comes from the suffix: .csv, or .tsv (tab-separated)
            output_path=f"{STORAGE}/r/{RUN_STAMP}/mtcars-{fmt}.parquet",
            output_conn_id=STORAGE_CONN_ID,
            parallel_count=10,
            poll_interval=2,
            deferrable=True,
            retries=2,  # a retry reattaches to its execution: nothing is scored twice (see the README)
            retry_delay=timedelta(seconds=10),
        )
        MLServerArtifactsToObjectStorageOperator(
            task_id=f"collect_{fmt}_artifacts",
            service_name=r_service.SERVICE_NAME,
            service_version=publish.output["service_version"],
            execution_ids=score.output,
            file_names=["Histogram.png"],
            dest=f"{STORAGE}/r/{RUN_STAMP}/artifacts-{fmt}",  # <record>/Histogram.png, and manifest.json
            dest_conn_id=STORAGE_CONN_ID,
            max_concurrency=4,
        )
        checked >> score
        scores[fmt] = score

    @task
    def summary(
        published: dict[str, Any], check: float, csv: dict[str, Any], tsv: dict[str, Any]
    ) -> dict[str, Any]:
        import pandas as pd

        frames = {}
        for fmt, scores in (("csv", csv), ("tsv", tsv)):
            with ObjectStoragePath(scores["output_uri"], conn_id=STORAGE_CONN_ID).open("rb") as handle:
                frames[fmt] = pd.read_parquet(
                    handle, columns=["model", "hp", "wt", "am", "answer", "success"]
                )
        pd.testing.assert_frame_equal(frames["csv"], frames["tsv"])  # the same cars, whichever file
        frame = frames["csv"]
        print(published_words(published))
        print(f"manualTransmission(120, 2.8) = {check:.7f}")
        print(f"Scored {len(frame)} cars from mtcars.csv and from mtcars.tsv, the same answers")
        table = (
            frame.head(8).rename(columns={"answer": "P(manual)"}).to_string(index=False, float_format="%.4f")
        )
        print(table, flush=True)  # the whole table in the task's log before Airflow's "Post Execute" lines
        return {
            "published": published["published"],
            "check": check,
            "csv": csv["output_uri"],
            "tsv": tsv["output_uri"],
            "cars": len(frame),
        }

    summary(publish.output, checked, scores["csv"].output, scores["tsv"].output)
