"""The DAGs of ``bench/triggerer.py``: N deferred tasks and the event-loop probe, ours and the baseline.

* ``bench_triggerer_ours``: ``MLServerBatchOperator`` mapped over N map indices, one record each, deferrable,
  polled every 10 s;
* ``bench_triggerer_baseline``: Airflow's ``DateTimeSensorAsync`` (``DateTimeTrigger``) mapped over N, deferred
  from the worker like ours (no ``start_from_trigger``); each target time comes from the run's conf
  (``targets``: map index -> ISO time), far in the future for the indices it does not name.

Each DAG also runs ``probe``, a task that defers to :class:`bench_triggerer_probe.LagProbeTrigger`. The resume of
a mapped task (the method Airflow calls after its trigger fired) writes the time it started into
``$MLSERVER_BENCH_DIR/<scenario>-resumed/<map index>``. N is ``$MLSERVER_BENCH_TRIGGERS``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, BaseOperator
from bench_triggerer_probe import LagProbeTrigger

from airflow_mlserver.operators.batch import MLServerBatchOperator

N = int(os.environ.get("MLSERVER_BENCH_TRIGGERS", "10"))
FOLDER = Path(os.environ.get("MLSERVER_BENCH_DIR", "/tmp/mlserver-bench-triggerer"))
SERVICE, VERSION = "bench_hold", "1.0"
POLL_S = 10
FAR = "2100-01-01T00:00:00+00:00"


def _note_resume(scenario: str, context: Any) -> None:
    """Write when this map index resumed, once (the first resume of the try)."""
    folder = FOLDER / f"{scenario}-resumed"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / str(context["ti"].map_index)
    if not path.exists():
        path.write_text(f"{time.time():.3f}")


class LagProbe(BaseOperator):
    """Defers to the lag probe until the benchmark writes ``<scenario>-probe-stop``."""

    def __init__(self, *, scenario: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def execute(self, context: Any) -> None:
        self.defer(
            trigger=LagProbeTrigger(
                samples_path=str(FOLDER / f"{self.scenario}-probe.jsonl"),
                stop_path=str(FOLDER / f"{self.scenario}-probe-stop"),
            ),
            method_name="done",
        )

    def done(self, context: Any, event: Any = None) -> Any:
        return event


class ResumeTimedBatchOperator(MLServerBatchOperator):
    """The batch operator, noting when it resumed after its trigger fired."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        _note_resume("ours", context)
        return super().execute_complete(context, event)


class ResumeTimedDateTimeSensor(DateTimeSensorAsync):
    """Airflow's deferrable date-time sensor, its target time read from the run's conf, noting its resume."""

    def __init__(self, *, slot: int, **kwargs: Any) -> None:
        super().__init__(target_time=FAR, **kwargs)
        self.slot = slot

    def execute(self, context: Any) -> Any:
        targets = (context["dag_run"].conf or {}).get("targets") or {}
        self.target_time = targets.get(str(self.slot), FAR)
        return super().execute(context)

    def execute_complete(self, context: Any, event: Any = None) -> None:
        _note_resume("baseline", context)
        return super().execute_complete(context, event)


COMMON: dict[str, Any] = {
    "schedule": None,
    "start_date": datetime(2026, 1, 1),
    "catchup": False,
    "is_paused_upon_creation": False,
    "max_active_runs": 1,
    "max_active_tasks": N + 10,
}

with DAG("bench_triggerer_ours", **COMMON):
    LagProbe(task_id="probe", scenario="ours")
    ResumeTimedBatchOperator.partial(
        task_id="wait",
        service_name=SERVICE,
        service_version=VERSION,
        parallel_count=1,
        deferrable=True,
        poll_interval=POLL_S,
    ).expand(records=[[{"x": float(i)}] for i in range(N)])

with DAG("bench_triggerer_baseline", **COMMON):
    LagProbe(task_id="probe", scenario="baseline")
    ResumeTimedDateTimeSensor.partial(task_id="wait").expand(slot=list(range(N)))
