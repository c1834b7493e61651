"""Event-driven: collect the artifacts of every batch execution of ``TxService`` 1.0 that finishes, whoever
started it (the batch example, an R session, Microsoft's Python client, raw HTTP).

The asset ``mlserver://TxService/1.0/batch-executions`` is watched by ``MLServerBatchExecutionsTrigger`` on the
triggerer: it polls the service's executions every 30 seconds and makes one asset event per execution that
finishes, each at most once (across triggerer restarts too: it remembers them in the asset's state store). The
DAG is scheduled on the asset, so each event makes a run (events that come in together may make one run of
several):

1. ``finished_executions`` reads the run's asset events (``triggering_asset_events``; each event's
   ``extra["payload"]`` is the trigger's: ``execution_id``, ``state``, ``total``, ``completed``, ``failed``,
   ``service_name``, ``service_version``), prints them and answers the ids of the complete ones;
2. ``collect_artifacts``, mapped over those ids, copies each execution's artifacts to
   ``<storage>/finished/<execution id>/<record>/<file name>``, with its ``manifest.json``.

Executions already finished when the watcher first runs are not announced: only those that finish afterwards.
Nothing here starts a batch: run ``mlserver_batch_scoring`` (or start one from anywhere) and this DAG runs once
its execution has finished. Storage: as the other examples (``MLSERVER_EXAMPLES_STORAGE``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import mtcars_service
from _common import STORAGE, STORAGE_CONN_ID
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_mlserver.operators.artifacts import MLServerArtifactsToObjectStorageOperator
from airflow_mlserver.triggers.executions import MLServerBatchExecutionsTrigger

SERVICE, VERSION = mtcars_service.SERVICE_NAME, mtcars_service.SERVICE_VERSION

#: One asset event per execution of the service that finishes; ``extra["payload"]`` says which and how.
FINISHED_BATCHES = Asset(
    name="mlserver_txservice_finished_batches",
    uri=f"mlserver://{SERVICE}/{VERSION}/batch-executions",
    watchers=[
        AssetWatcher(
            name="mlserver_txservice_batch_executions",
            trigger=MLServerBatchExecutionsTrigger(
                service_name=SERVICE,
                service_version=VERSION,
                mlserver_conn_id="mlserver_default",
                poll_interval=30,
            ),
        )
    ],
)

with DAG(
    "mlserver_collect_finished_batches",
    schedule=[FINISHED_BATCHES],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["mlserver", "example"],
    doc_md=__doc__,
):

    @task
    def finished_executions(triggering_asset_events: Any = None) -> list[str]:
        """The complete executions among the run's asset events (a run triggered by hand has none)."""
        complete = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                finished = (event.extra or {}).get("payload") or {}
                print(
                    f"Batch execution {finished.get('execution_id')} finished {finished.get('state')}: "
                    f"{finished.get('completed')} of {finished.get('total')} records done, "
                    f"{finished.get('failed')} failed"
                )
                if str(finished.get("state", "")).lower() == "complete":
                    complete.append(finished["execution_id"])
        return complete

    MLServerArtifactsToObjectStorageOperator.partial(
        task_id="collect_artifacts",
        service_name=SERVICE,
        service_version=VERSION,
        dest=f"{STORAGE}/finished",  # <execution id>/<record>/<file name>, and <execution id>/manifest.json
        dest_conn_id=STORAGE_CONN_ID,
        max_concurrency=4,
    ).expand(execution_id=finished_executions())
