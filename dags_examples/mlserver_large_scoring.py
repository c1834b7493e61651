"""Score a large input file in chunks, one mapped task per chunk, merge the results, keep the borderline cars' files.

Every logical date gets its own input (generated deterministically from the date: the same rows on every
rerun) and its own output folder, so reruns and backfills overwrite their own outputs and never mix dates. A
run without a logical date (triggered with ``"logical_date": null`` through the REST API) is named by when it
was triggered (``dag_run.run_after``, e.g. ``2026-12-07T190108``) instead: its own input and folder, the same
on its reruns.
Each mapped task is an ``MLServerBatchOperator`` with its own batch execution; a retried chunk reattaches to
its execution instead of scoring again. The merged results are published as the ``mlserver_large_scores``
asset, on which ``mlserver_scores_report`` is scheduled; their ``record`` column numbers the cars across the
chunks. The service writes a file (``borderline.csv``) only for the cars it cannot call; one artifacts task
copies those of every chunk, selected by their record numbers in the merged results.

The service, ``TxScore`` 2.0 (the mtcars model's variant that writes ``borderline.csv`` only), is published
first by ``MLServerPublishServiceOperator``, with the coefficients ``train`` fits as its model object
``coefficients``; the version carries the content's digest, so a rerun publishes nothing (other content
replaces 2.0). The version is fixed, so nothing is retired: there is no delete step.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mtcars_service
from _common import LARGE_SCORES as SCORES
from _common import RUN_KEY, STORAGE, STORAGE_CONN_ID, run_key
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.operators.services import MLServerPublishServiceOperator

SERVICE, VERSION = "TxScore", "2.0"  # 2.0 writes borderline.csv (1.0 wrote no file)

with DAG(
    "mlserver_large_scoring",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"rows": 200_000, "chunk_rows": 50_000},
    tags=["mlserver", "example"],
    doc_md=__doc__,
):

    @task
    def train() -> dict[str, list[float]]:
        """The model objects: ``{"coefficients": [intercept, hp, wt]}``, fitted on mtcars."""
        return {"coefficients": mtcars_service.train()}

    publish = MLServerPublishServiceOperator(
        task_id="publish",
        service_name=SERVICE,
        service_version=VERSION,
        model_objects=train(),
        if_exists="replace",
        **mtcars_service.service_arguments(borderline_only=True),
    )

    @task
    def generate_input(
        params: dict[str, Any], dag_run: Any, logical_date: datetime | None = None
    ) -> list[dict[str, str]]:
        """Write the run's input as Parquet parts of ``chunk_rows`` rows; answer one kwargs dict per chunk."""
        import numpy as np
        import pandas as pd

        rows, chunk_rows = int(params["rows"]), int(params["chunk_rows"])
        key = run_key(dag_run, logical_date)  # 2026-03-01, or 2026-12-07T190108 for a run without a date
        seed = int("".join(c for c in key if c.isdigit()))  # 20260301: as ever for a date
        rng = np.random.default_rng(seed)  # the same rows for the same date (or run), on every rerun
        base = ObjectStoragePath(f"{STORAGE}/large/{key}", conn_id=STORAGE_CONN_ID)
        chunks = []
        for part, start in enumerate(range(0, rows, chunk_rows)):
            n = min(chunk_rows, rows - start)
            frame = pd.DataFrame(
                {"car_id": np.arange(start, start + n), "hp": rng.uniform(50, 340, n).round(0),
                 "wt": rng.uniform(1.5, 5.5, n).round(3)}
            )  # fmt: skip
            path = base / "input" / f"part-{part:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                frame.to_parquet(handle, index=False)
            chunks.append(
                {"records": str(path), "output_path": str(base / "scores" / f"part-{part:05d}.parquet")}
            )
        return chunks

    score = MLServerBatchOperator.partial(
        task_id="score_chunk",
        service_name=SERVICE,
        service_version=publish.output["service_version"],
        records_conn_id=STORAGE_CONN_ID,
        output_conn_id=STORAGE_CONN_ID,
        parallel_count=20,
        poll_interval=5,
        deferrable=True,
        retries=2,
        retry_delay=timedelta(seconds=10),
    ).expand_kwargs(generate_input())

    @task(outlets=[SCORES])
    def merge(
        summaries: list[dict[str, Any]],
        dag_run: Any,
        logical_date: datetime | None = None,
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        """Concatenate the chunks' results, in chunk order, into one Parquet file (streamed, part by part).

        Each part numbers its records from 0; the merged ``record`` column numbers them across the chunks, as the
        artifacts task does.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = run_key(dag_run, logical_date)
        target = ObjectStoragePath(f"{STORAGE}/large/{key}/scores.parquet", conn_id=STORAGE_CONN_ID)
        parts = sorted(s["output_uri"] for s in summaries)
        writer, offset = None, 0
        with target.open("wb") as handle:
            for uri in parts:
                with ObjectStoragePath(uri, conn_id=STORAGE_CONN_ID).open("rb") as part:
                    table = pq.read_table(part)
                column = table.schema.get_field_index("record")
                numbers = pa.array(range(offset, offset + table.num_rows), table.schema.field(column).type)
                table = table.set_column(column, "record", numbers)
                offset += table.num_rows
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
            if writer is not None:
                writer.close()
        total = sum(s["total"] for s in summaries)
        failed = sum(s["failed"] for s in summaries)
        date = logical_date.strftime("%Y-%m-%d") if logical_date else None  # None: a run without one
        outlet_events[SCORES].extra = {
            "path": str(target),
            "date": date,
            "run_id": dag_run.run_id,
            "records": total,
        }
        return {"path": str(target), "records": total, "failed": failed, "chunks": len(parts)}

    @task
    def borderline_records(merged: dict[str, Any]) -> list[int]:
        """The record numbers of the cars the model cannot call (the merged results' ``record`` column)."""
        import pandas as pd

        with ObjectStoragePath(merged["path"], conn_id=STORAGE_CONN_ID).open("rb") as handle:
            frame = pd.read_parquet(handle, columns=["record", "answer"])
        low, high = mtcars_service.BORDERLINE
        return [int(r) for r in frame.loc[(frame["answer"] > low) & (frame["answer"] < high), "record"]]

    collect = MLServerArtifactsToObjectStorageOperator(
        task_id="collect_borderline_artifacts",
        service_name=SERVICE,
        service_version=publish.output["service_version"],
        execution_ids=score.output,  # every chunk's summary, in map index order: their executions
        indexes=borderline_records(merge(score.output)),  # record numbers, as in the merged results
        dest=f"{STORAGE}/large/{RUN_KEY}/borderline",  # <record>/borderline.csv, and manifest.json
        dest_conn_id=STORAGE_CONN_ID,
        max_concurrency=8,
        poll_interval=5,
    )
