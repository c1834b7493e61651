"""``MLServerBatchSensor``: wait for a batch execution, e.g. one started outside Airflow, to complete."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.client.words import count, plural
from airflow_mlserver.exceptions import MLServerConnectionError, MLServerError, MLServerExecutionEndedError
from airflow_mlserver.executions.events import BatchEvent
from airflow_mlserver.executions.outage import (
    DEFAULT_UNREACHABLE_TIMEOUT,
    GIVE_UP,
    PERMANENT,
    Outage,
    OutageWatch,
    waited_for,
)
from airflow_mlserver.executions.progress import status_line
from airflow_mlserver.executions.waiting import Outcome, ended, ended_message, outcome
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import Check, check_arguments, flag, seconds, segment, text
from airflow_mlserver.operators.links import MLServerBatchLink
from airflow_mlserver.triggers.batch import MLServerBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The check of each argument of the sensor's own (see :mod:`~airflow_mlserver.operators.arguments`).
ARGUMENT_CHECKS: dict[str, Check] = {
    "service_name": segment("the name of a published web service"),
    "service_version": segment("the version of the service"),
    "execution_id": segment("the id of a batch execution of that service version"),
    "deferrable": flag(),
    "unreachable_timeout": seconds(),
    "mlserver_conn_id": text("an Airflow connection id"),
}
#: Where a sensor in ``reschedule`` mode keeps an outage under way between pokes (its task-state store).
OUTAGE_KEY = "mlserver_outage"
#: Airflow's durations of a sensor, checked before Airflow's own checks (which refuse less, and say less).
DURATION_CHECKS: dict[str, Check] = {"poke_interval": seconds(), "timeout": seconds(zero=True)}


class MLServerBatchSensor(BaseSensorOperator):
    """Wait until a batch execution reaches ``Complete``; ``Failed`` or canceled fails the task.

    Works in ``poke`` and ``reschedule`` mode and, with ``deferrable=True``, on the triggerer through the same
    :class:`~airflow_mlserver.triggers.batch.MLServerBatchTrigger` as the batch operator. ``timeout`` is
    measured from the first poke in every mode. With ``soft_fail`` a failed or canceled execution, or the
    timeout, skips the task instead of failing it. The sensor returns the execution's final counts.

    While the server cannot be read (refused connections, unknown host, timeouts, server errors after the
    connection's retries), a poke counts as not done yet and says so once a minute; once that has lasted
    ``unreachable_timeout``, the next poke fails with the last error (a retry of the task waits again). In
    ``reschedule`` mode the outage is kept between pokes in the task-state store. The sensor's ``timeout`` still
    applies, and wins when it comes first. An unknown execution or refused credentials fail at once.

    Every argument is checked when the DAG is parsed, a templated one right after it renders (before the first
    poke); ``poke_interval`` must be a finite number of seconds above 0 and ``timeout`` one of 0 or more.

    :param service_name: The web service. (templated)
    :param service_version: Its version. (templated)
    :param execution_id: The batch execution to wait for. (templated)
    :param deferrable: Wait on the triggerer (default ``[operators] default_deferrable``).
    :param unreachable_timeout: Longest time (seconds or a timedelta, default 30 minutes) the server may stay
        unreadable before the sensor fails with the last error.
    :param mlserver_conn_id: The Machine Learning Server connection (default ``mlserver_default``). (templated)
    """

    template_fields: Sequence[str] = ("service_name", "service_version", "execution_id", "mlserver_conn_id")
    operator_extra_links = (MLServerBatchLink(),)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        service_name: str,
        service_version: str,
        execution_id: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT,
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        for name, check in DURATION_CHECKS.items():  # before Airflow's own checks, which say less
            if kwargs.get(name) is not None:
                kwargs[name] = check(name, kwargs[name])
        super().__init__(**kwargs)
        self.service_name = service_name
        self.service_version = service_version
        self.execution_id = execution_id
        self.deferrable = deferrable
        self.unreachable_timeout = unreachable_timeout
        self.mlserver_conn_id = mlserver_conn_id
        check_arguments(self, ARGUMENT_CHECKS)
        self._watch: OutageWatch | None = None
        self._last: BatchStatus | None = None

    def _status(self) -> BatchStatus:
        hook = MLServerHook(mlserver_conn_id=self.mlserver_conn_id)
        return hook.get_batch(self.service_name, self.service_version, self.execution_id)

    def _check(self, status: BatchStatus) -> bool:
        if ended(status):
            raise MLServerExecutionEndedError(
                f"{ended_message(self.execution_id, self.service_name, self.service_version, status)} "
                f"({count(status.completed)}/{plural(status.total, 'record')} done). Start a new execution; this one "
                "will not complete."
            )
        self.log.info("%s", status_line(status))  # once a poke; a pending execution says so
        return outcome(status) is Outcome.COMPLETE

    def _read(self, context: Context) -> BatchStatus | None:
        """The execution's status; None while an outage is waited out (:mod:`~airflow_mlserver.executions.outage`,
        on the wall clock, which a rescheduled poke shares)."""
        store = context.get("task_state_store") if self.reschedule else None
        if self._watch is None:
            what = waited_for([self.execution_id], self.service_name, self.service_version)
            kept = Outage.from_stored(store.get(OUTAGE_KEY)) if store is not None else None
            self._watch = OutageWatch(self.log, float(self.unreachable_timeout), what, outage=kept)
        watch, before = self._watch, self._watch.outage
        began = time.time()
        try:
            status = self._status()
        except MLServerError as exc:
            now = time.time()
            verdict = watch.failed(exc, began, now)
            if verdict is PERMANENT:
                raise
            if verdict is GIVE_UP:
                raise MLServerConnectionError(watch.message(now)) from exc
            if store is not None and watch.outage != before:
                store.set(OUTAGE_KEY, watch.outage.to_stored() if watch.outage else {})
            return None
        watch.readable(time.time())
        if store is not None and before is not None:
            store.set(OUTAGE_KEY, {})
        self._last = status
        return status

    def poke(self, context: Context) -> bool:
        status = self._read(context)
        return status is not None and self._check(status)

    def execute(self, context: Context) -> Any:
        check_arguments(self, ARGUMENT_CHECKS, rendered=True)
        if not self.deferrable:
            super().execute(context)
            return self._summary(self._last or self._status())
        status = self._read(context)  # while the server cannot be read, the trigger waits it out
        if status is not None and self._check(status):
            return self._summary(status)
        self.defer(
            trigger=MLServerBatchTrigger(
                mlserver_conn_id=self.mlserver_conn_id,
                service_name=self.service_name,
                service_version=self.service_version,
                execution_ids=[self.execution_id],
                poll_interval=self.poke_interval,
                deadline=time.time() + self.timeout,
                cancel_on_kill=False,  # the sensor does not own the execution
                map_index=getattr(context.get("ti"), "map_index", None),
                unreachable_timeout=float(self.unreachable_timeout),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        ended_wait = BatchEvent.from_payload(event)
        if ended_wait.status is Outcome.TIMEOUT:
            from airflow.sdk.exceptions import AirflowSensorTimeout

            raise AirflowSensorTimeout(
                f"Batch execution {self.execution_id} did not complete within the sensor's timeout of "
                f"{self.timeout:g} s: {ended_wait.message}"
            )
        if ended_wait.unreachable:  # the server could not be read for unreachable_timeout: a retry may
            raise MLServerConnectionError(ended_wait.message)
        if ended_wait.status is not Outcome.COMPLETE:
            raise MLServerExecutionEndedError(f"{ended_wait.message or event}. Start a new execution.")
        counts = ended_wait.executions.get(self.execution_id)
        if counts is None:
            return self._summary(self._status())
        return {"execution_id": self.execution_id, "state": counts.state, "total": counts.total,
                "completed": counts.completed, "failed": counts.failed}  # fmt: skip

    @staticmethod
    def _summary(status: BatchStatus) -> dict[str, Any]:
        return {
            "execution_id": status.execution_id,
            "state": status.state,
            "total": status.total,
            "completed": status.completed,
            "failed": status.failed,
        }
