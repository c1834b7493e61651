"""Where the example DAGs write: ``MLSERVER_EXAMPLES_STORAGE`` (any ``ObjectStoragePath`` URI), else a local folder."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

STORAGE = os.environ.get("MLSERVER_EXAMPLES_STORAGE", "file:///tmp/airflow-mlserver-examples").rstrip("/")
#: The connection for STORAGE (e.g. ``aws_default`` for ``s3://``); None for local files.
STORAGE_CONN_ID = os.environ.get("MLSERVER_EXAMPLES_STORAGE_CONN_ID") or None

from airflow.sdk import Asset  # noqa: E402 - after the settings it is built from

#: The merged results of ``mlserver_large_scoring``; ``mlserver_scores_report`` is scheduled on it.
LARGE_SCORES = Asset(name="mlserver_large_scores", uri=f"{STORAGE}/large/scores")

#: The results of ``mlserver_batch_scoring``.
MTCARS_SCORES = Asset(name="mlserver_mtcars_scores", uri=f"{STORAGE}/scores")

#: A folder name per run: when it was due or triggered (``dag_run.run_after``), which every run has, also a run
#: without a logical date (``"logical_date": null`` in the REST API, an asset-triggered run).
RUN_STAMP = "{{ dag_run.run_after.strftime('%Y%m%dT%H%M%S') }}"


def run_stamp(dag_run: Any) -> str:
    """:data:`RUN_STAMP` in a task's code (``20261207T190108``): give it the task's ``dag_run``."""
    run_after: datetime = dag_run.run_after
    return run_after.strftime("%Y%m%dT%H%M%S")


#: The folder of a run of dated data: its logical date (``2026-03-01``, what ``{{ ds }}`` renders) when it has
#: one, so that reruns and backfills of a date write that date's folder; else when the run was triggered
#: (``2026-12-07T190108``), which its reruns keep. A run without a logical date has no ``ds``, ``ds_nodash``,
#: ``ts``, ``logical_date`` or ``data_interval_start``/``_end`` in its context: a template naming one fails.
RUN_KEY = (
    "{{ logical_date.strftime('%Y-%m-%d') if logical_date is defined and logical_date"
    " else dag_run.run_after.strftime('%Y-%m-%dT%H%M%S') }}"
)


def run_key(dag_run: Any, logical_date: datetime | None = None) -> str:
    """:data:`RUN_KEY` in a task's code: give it the task's ``dag_run`` and ``logical_date`` (None without one)."""
    if logical_date is not None:
        return logical_date.strftime("%Y-%m-%d")
    run_after: datetime = dag_run.run_after
    return run_after.strftime("%Y-%m-%dT%H%M%S")


def published_words(published: dict[str, Any]) -> str:
    """One line on what a publish task answered (``MLServerPublishServiceOperator``'s return value)."""
    service = f"Web service '{published['service_name']}' version '{published['service_version']}'"
    content = f"content sha256:{published['digest']}" if published["digest"] else "no content digest"
    if published["published"]:
        return f"{service}: published by this run ({content})"
    return f"{service}: found with the same content ({content}), nothing published"
