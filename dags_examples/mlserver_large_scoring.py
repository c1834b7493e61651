"""Score a large input file in chunks, one mapped task per chunk, then merge the results.

Every logical date gets its own input (generated deterministically from the date: the same rows on every
rerun) and its own output folder, so reruns and backfills overwrite their own outputs and never mix dates.
Each mapped task is an ``MLServerBatchOperator`` with its own batch execution; a retried chunk reattaches to
its execution instead of scoring again. The merged results are published as the ``mlserver_large_scores``
asset, on which ``mlserver_scores_report`` is scheduled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from _common import LARGE_SCORES as SCORES
from _common import STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_mlserver.operators.batch import MLServerBatchOperator

SERVICE, VERSION = "TxScore", "1.0"

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
    def publish_model() -> str:
        """Publish the artifact-free variant of the mtcars model, unless it is there."""
        import mtcars_service

        from airflow_mlserver.hooks.mlserver import MLServerHook

        return mtcars_service.publish_if_absent(MLServerHook(), SERVICE, VERSION, artifacts=False)

    @task
    def generate_input(params: dict[str, Any], ds: str, ds_nodash: str) -> list[dict[str, str]]:
        """Write the day's input as Parquet parts of ``chunk_rows`` rows; answer one kwargs dict per chunk."""
        import numpy as np
        import pandas as pd

        rows, chunk_rows = int(params["rows"]), int(params["chunk_rows"])
        rng = np.random.default_rng(int(ds_nodash))  # the same rows for the same date, on every rerun
        base = ObjectStoragePath(f"{STORAGE}/large/{ds}", conn_id=STORAGE_CONN_ID)
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
        service_version=VERSION,
        records_conn_id=STORAGE_CONN_ID,
        output_conn_id=STORAGE_CONN_ID,
        parallel_count=20,
        poll_interval=5,
        deferrable=True,
        retries=2,
    ).expand_kwargs(generate_input())

    @task(outlets=[SCORES])
    def merge(summaries: list[dict[str, Any]], ds: str, outlet_events: Any = None) -> dict[str, Any]:
        """Concatenate the chunks' results, in chunk order, into one Parquet file (streamed, part by part)."""
        import pyarrow.parquet as pq

        target = ObjectStoragePath(f"{STORAGE}/large/{ds}/scores.parquet", conn_id=STORAGE_CONN_ID)
        parts = sorted(s["output_uri"] for s in summaries)
        writer = None
        with target.open("wb") as handle:
            for uri in parts:
                with ObjectStoragePath(uri, conn_id=STORAGE_CONN_ID).open("rb") as part:
                    table = pq.read_table(part)
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
            if writer is not None:
                writer.close()
        total = sum(s["total"] for s in summaries)
        failed = sum(s["failed"] for s in summaries)
        outlet_events[SCORES].extra = {"path": str(target), "date": ds, "records": total}
        return {"path": str(target), "records": total, "failed": failed, "chunks": len(parts)}

    publish_model() >> score
    merge(score.output)
