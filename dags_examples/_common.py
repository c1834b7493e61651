"""Where the example DAGs write: ``MLSERVER_EXAMPLES_STORAGE`` (any ``ObjectStoragePath`` URI), else a local folder."""

from __future__ import annotations

import os

STORAGE = os.environ.get("MLSERVER_EXAMPLES_STORAGE", "file:///tmp/airflow-mlserver-examples").rstrip("/")
#: The connection for STORAGE (e.g. ``aws_default`` for ``s3://``); None for local files.
STORAGE_CONN_ID = os.environ.get("MLSERVER_EXAMPLES_STORAGE_CONN_ID") or None

from airflow.sdk import Asset  # noqa: E402 - after the settings it is built from

#: The merged results of ``mlserver_large_scoring``; ``mlserver_scores_report`` is scheduled on it.
LARGE_SCORES = Asset(name="mlserver_large_scores", uri=f"{STORAGE}/large/scores")

#: A folder name per run: the run's time (manual runs have no logical date).
RUN_STAMP = "{{ dag_run.run_after.strftime('%Y%m%dT%H%M%S') }}"

#: The results of ``mlserver_batch_scoring``.
MTCARS_SCORES = Asset(name="mlserver_mtcars_scores", uri=f"{STORAGE}/scores")
