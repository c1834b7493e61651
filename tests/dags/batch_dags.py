"""DAGs the operator tests run with ``dag.test()``; each test picks its service, records and output by params."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from airflow.sdk import DAG

from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.operators.batch.state import BatchState
from airflow_mlserver.sensors.batch import MLServerBatchSensor

PARAMS = {"service": "scorer", "version": "v1", "records": "", "output": "", "execution_id": "", "before": [],
          "intent_records": 0, "intent_key": "", "rescore_execution": "", "rescore_records": ""}  # fmt: skip
COMMON = {"schedule": None, "start_date": datetime(2026, 1, 1), "catchup": False,
          "render_template_as_native_obj": True, "params": PARAMS}  # fmt: skip


def _batch(dag_id: str, **kwargs: object) -> DAG:
    with DAG(dag_id, **COMMON) as dag:  # type: ignore[arg-type]
        MLServerBatchOperator(
            task_id="score",
            service_name="{{ params.service }}",
            service_version="{{ params.version }}",
            records=kwargs.pop("records", "{{ params.records }}"),
            output_path="{{ params.output }}",
            poll_interval=0.3,
            **kwargs,  # type: ignore[arg-type]
        )
    return dag


deferrable = _batch("mlserver_test_deferrable", deferrable=True)
in_worker = _batch("mlserver_test_in_worker", deferrable=False, output_format="csv")
tolerant = _batch("mlserver_test_tolerant", deferrable=True, max_failed_records=5)
chunked = _batch("mlserver_test_chunked", deferrable=True, chunk_size=7, max_active_executions=2)
in_worker_init_fails = _batch("mlserver_test_in_worker_badinit", deferrable=False)
returning = _batch("mlserver_test_return_results", deferrable=False, return_results=True)
timed = _batch("mlserver_test_timeout", deferrable=True, timeout=3)
from_frame = _batch(
    "mlserver_test_dataframe",
    deferrable=True,
    records=pd.DataFrame({"x": [1.5, 2.0, 3.0], "name": ["a", "b", "c"]}),
)


with DAG("mlserver_test_defaults", **COMMON) as defaults:  # type: ignore[arg-type]
    MLServerBatchOperator(
        task_id="score",
        service_name="scorer",
        records="{{ params.records }}",
        output_path="{{ params.output }}",
    )

ignoring = _batch("mlserver_test_ignore", deferrable=True, extra_columns="ignore")
refusing = _batch("mlserver_test_refuse", deferrable=True, extra_columns="error")


def _store_legacy_state(context: Any) -> None:
    """Store the batch state as an older version of the provider did (Unix timestamps), as its first try would.

    The execution is ``params.execution_id``, started 90 s ago; it runs before ``execute`` (and only when the
    store is still empty), so the operator finds it as a retry would.
    """
    store, params = context["task_state_store"], context["params"]
    if not store.get("mlserver_batch"):
        started = time.time() - 90
        store.set("mlserver_batch", {
            "service": params["service"], "version": params["version"], "chunks": 1,
            "executions": {"0": params["execution_id"]}, "started": started, "deadline": started + 3600,
        })  # fmt: skip


legacy_state = _batch("mlserver_test_legacy_state", deferrable=False, pre_execute=_store_legacy_state)


class _DeferredByEarlierRelease(MLServerBatchOperator):
    """Its first run is what release 0.1.0 left of a deferred task: its state's form (chunks and rescores apart,
    no record numbers) and its trigger's kwargs, exactly as the fixtures in ``tests/fixtures/earlier_release``
    hold them; the resume is this release's ``execute_complete``."""

    def execute(self, context: Any) -> Any:
        from airflow_mlserver.triggers.batch import MLServerBatchTrigger

        params, started = context["params"], time.time() - 30
        context["task_state_store"].set("mlserver_batch", {
            "service": params["service"], "version": params["version"], "chunks": 2,
            "executions": {"0": params["execution_id"], "1": params["rescore_execution"]},
            "executions_started": {"0": started, "1": started}, "started": started, "deadline": None,
            "rescores": [], "intent": None, "written": "",
        })  # fmt: skip
        ids = [params["execution_id"], params["rescore_execution"]]
        self.defer(
            trigger=MLServerBatchTrigger(
                mlserver_conn_id="mlserver_default", service_name=params["service"],
                service_version=params["version"], execution_ids=ids, poll_interval=0.3, deadline=None,
                cancel_on_kill=True, labels={ids[0]: "chunk 1 of 2", ids[1]: "chunk 2 of 2"},
                started=dict.fromkeys(ids, started), map_index=None, until="first",
            ),
            method_name="execute_complete",
        )  # fmt: skip


with DAG("mlserver_test_deferred_by_earlier_release", **COMMON) as deferred_by_earlier_release:  # type: ignore[arg-type]
    _DeferredByEarlierRelease(
        task_id="score", service_name="{{ params.service }}", service_version="{{ params.version }}",
        records="{{ params.records }}", output_path="{{ params.output }}", poll_interval=0.3, deferrable=True,
        chunk_size=3,
    )  # fmt: skip


def _store_intent(context: Any) -> None:
    """Store what a try killed while starting the only chunk leaves: an intent and no execution id.

    The intent says ``params.intent_records`` records and the execution ids ``params.before``; it was written
    two minutes ago, so no answer of that start can still be on its way.
    """
    store, params = context["task_state_store"], context["params"]
    if not store.get("mlserver_batch"):
        started = time.time() - 120
        store.set("mlserver_batch", {
            "service": params["service"], "version": params["version"], "chunks": 1, "executions": {},
            "started": started, "deadline": None,
            "intent": {"round": 0, "part": 0, "records": params["intent_records"], "before": params["before"],
                       "at": started, "key": params["intent_key"] or None},
        })  # fmt: skip


killed_while_starting = _batch("mlserver_test_intent", deferrable=False, pre_execute=_store_intent)

rescoring = _batch("mlserver_test_rescore", deferrable=True, chunk_size=4, max_active_executions=2,
                   rescore_failed_records=2, max_failed_records=1)  # fmt: skip
rescoring_strict = _batch(
    "mlserver_test_rescore_strict", deferrable=False, chunk_size=3, rescore_failed_records=1
)


def _store_rescore_round(context: Any) -> None:
    """Store what a try stopped during its first rescore round leaves, as its retry finds it.

    The chunk (one, ``params.execution_id``) is complete; the round sends ``params.rescore_records`` again in one
    execution: ``params.rescore_execution`` when the try stored its id, else an intent of that many records
    with the execution ids ``params.before`` (the try was stopped while starting it).
    """
    store, params = context["task_state_store"], context["params"]
    if not store.get("mlserver_batch"):
        started, part = time.time() - 120, params["rescore_execution"]
        count = len(params["rescore_records"].split(","))
        store.set("mlserver_batch", {
            "service": params["service"], "version": params["version"], "chunks": 1,
            "executions": {"0": params["execution_id"]}, "started": started, "deadline": None,
            "rescores": [{"records": [params["rescore_records"]], "executions": {"0": part} if part else {},
                          "executions_started": {"0": started} if part else {}}],
            "intent": None if part else {"round": 1, "part": 0, "records": count, "before": params["before"],
                                         "at": started},
        })  # fmt: skip


rescore_retry = _batch(
    "mlserver_test_rescore_retry",
    deferrable=False,
    rescore_failed_records=1,
    pre_execute=_store_rescore_round,
)

pipelined = _batch("mlserver_test_pipeline", deferrable=True, chunk_size=1, max_active_executions=2)
pipelined_in_worker = _batch(
    "mlserver_test_pipeline_in_worker", deferrable=False, chunk_size=1, max_active_executions=2
)


class _LostMidway(MLServerBatchOperator):
    """Its first try stops when it resumes after a chunk's results were staged, as a lost worker would: some
    chunks complete (one staged), others running."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        state = BatchState.load(context["task_state_store"])
        if context["ti"].try_number == 1 and state is not None and state.written:
            raise RuntimeError("the worker was lost")
        return super().execute_complete(context, event)


with DAG("mlserver_test_lost_midway", **COMMON) as lost_midway:  # type: ignore[arg-type]
    _LostMidway(
        task_id="score", service_name="{{ params.service }}", service_version="{{ params.version }}",
        records="{{ params.records }}", output_path="{{ params.output }}", poll_interval=0.3, deferrable=True,
        chunk_size=1, max_active_executions=2, retries=1, retry_delay=timedelta(0),
    )  # fmt: skip

with DAG("mlserver_test_mapped", **COMMON) as mapped:  # type: ignore[arg-type]
    MLServerBatchOperator.partial(
        task_id="score", service_name="scorer", service_version="v1", chunk_size=2, poll_interval=0.3,
        deferrable=True,
    ).expand(records=[[{"x": float(i), "name": f"m{i}"} for i in range(n)] for n in (3, 2)])  # fmt: skip


def _sensor(dag_id: str, mode: str, deferrable: bool) -> DAG:
    with DAG(dag_id, **COMMON) as dag:  # type: ignore[arg-type]
        MLServerBatchSensor(
            task_id="wait",
            service_name="{{ params.service }}",
            service_version="{{ params.version }}",
            execution_id="{{ params.execution_id }}",
            mode=mode,
            deferrable=deferrable,
            poke_interval=0.5,
            timeout=60,
        )
    return dag


sensor_poke = _sensor("mlserver_test_sensor_poke", "poke", False)
sensor_reschedule = _sensor("mlserver_test_sensor_reschedule", "reschedule", False)
sensor_deferrable = _sensor("mlserver_test_sensor_deferrable", "poke", True)
