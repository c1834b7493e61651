"""Runs when ``mlserver_large_scoring`` publishes new scores (the ``mlserver_large_scores`` asset).

It reads the merged results named by the asset event and logs a short report: how many cars are likely
manual, and the distribution of the predicted probability. Its runs have no logical date (an asset-triggered
run has none, nor one triggered with ``"logical_date": null``), and it needs none: a run triggered by hand
reports on the newest scores, the last folder by name (``2026-03-01``, ``2026-12-07T190108``: dates first, a
day's runs without a logical date after its dated one).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from _common import LARGE_SCORES as SCORES
from _common import STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, ObjectStoragePath, task

with DAG(
    "mlserver_scores_report",
    schedule=[SCORES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mlserver", "example"],
    doc_md=__doc__,
):

    @task
    def report(triggering_asset_events: Any = None) -> dict[str, Any]:
        import pandas as pd

        events = (triggering_asset_events or {}).get(SCORES) or []
        if events:
            path = ObjectStoragePath(events[-1].extra["path"], conn_id=STORAGE_CONN_ID)
        else:  # a manual run: report on the newest scores there are (folders: a date, or a date and a time)
            found = sorted(
                ObjectStoragePath(f"{STORAGE}/large", conn_id=STORAGE_CONN_ID).glob("*/scores.parquet")
            )
            if not found:
                raise FileNotFoundError(f"No scores under {STORAGE}/large: run mlserver_large_scoring first.")
            path = found[-1]
        with path.open("rb") as handle:
            scores = pd.read_parquet(handle, columns=["answer", "success"])
        summary = {
            "path": str(path),
            "records": len(scores),
            "failed": int((~scores["success"]).sum()),
            "likely_manual": int((scores["answer"] > 0.5).sum()),
            "mean_probability": round(float(scores["answer"].mean()), 4),
        }
        print(pd.Series(summary).to_string())
        return summary

    report()
