"""The async poll behind every deferral of this provider: wait for batch executions to finish.

The trigger only observes. It polls the cheap status (``showPartialResults=false``) of each execution it
watches, logs progress once a minute (:class:`~airflow_mlserver.executions.progress.ProgressLog`: a pending
execution says how long it has waited, a mapped task names its map index), and yields exactly one event:
``complete`` when every execution is complete (or, with ``until="first"``, as soon as one is: its
``complete`` list names those that are), ``failed`` or ``canceled`` as soon as one is, ``timeout`` once
the deadline (computed once, before deferring, and passed in as a timestamp so that it holds across triggerer
restarts) has passed, or ``error`` when an execution is unknown to the server (or the credentials are refused),
or when the server could not be read for ``unreachable_timeout``. While the server cannot be read it keeps
polling with backoff, logs the state as unknown (never as failed) once a minute, and gives up after
``unreachable_timeout`` with the last error, unless the deadline comes first. What counts as complete, failed or
past the deadline is :mod:`airflow_mlserver.executions.waiting`'s rule, what counts as an outage and how long it
is waited out :mod:`airflow_mlserver.executions.outage`'s, the same in workers and in the sensor.

Cancelling the executions is not its job, except in :meth:`MLServerBatchTrigger.on_kill`, which Airflow
calls only when a user kills the task (mark failed, mark success, clear), never on a triggerer restart;
:meth:`cleanup` runs on every exit, restarts included, and therefore cancels nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlserver.client.words import count, plural
from airflow_mlserver.exceptions import MLServerError
from airflow_mlserver.executions.events import BatchEvent, Counts
from airflow_mlserver.executions.outage import (
    DEFAULT_UNREACHABLE_TIMEOUT,
    GIVE_UP,
    PERMANENT,
    OutageWatch,
    waited_for,
)
from airflow_mlserver.executions.progress import PROGRESS_INTERVAL, ProgressLog, map_prefix
from airflow_mlserver.executions.timing import Seen, observe
from airflow_mlserver.executions.waiting import (
    ALL,
    Outcome,
    Until,
    deadline_passed,
    ended_message,
    first_wait,
    outcome,
    sleep_time,
    wait_over,
)
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.hooks.shared import acquire, release, shared_hook, sharing

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus


class MLServerBatchTrigger(BaseTrigger):
    """Wait until every given batch execution of one service has finished (or the first, ``until="first"``).

    :param mlserver_conn_id: The Airflow connection of the server (never a token: kwargs are stored).
    :param service_name: The web service.
    :param service_version: Its version.
    :param execution_ids: The batch executions to watch.
    :param poll_interval: Seconds between two rounds of status polls.
    :param deadline: A Unix timestamp after which a ``timeout`` event is sent; None for no deadline.
    :param cancel_on_kill: Cancel the unfinished executions when a user kills the task.
    :param progress_interval: Seconds between two progress log lines.
    :param labels: How the log names each execution id (e.g. ``chunk 2 of 3``).
    :param started: When each execution was started (Unix timestamps), for how long a pending one has waited;
        the trigger's own start for those not given.
    :param map_index: The task instance's map index, named in every log line of a mapped task.
    :param until: ``"all"`` (default) to wait until every execution is complete, ``"first"`` to end the wait as
        soon as one is (the batch operator then starts its next chunk).
    :param unreachable_timeout: Seconds the server may stay unreadable (refused connections, timeouts, server
        errors after the client's retries) before an ``error`` event with the last error; default 30 minutes.
        Counted within one run of the trigger (a triggerer restart counts again).

    Every trigger of one connection in a triggerer's event loop shares one client (one HTTP connection pool, one
    token, one TLS context; :mod:`airflow_mlserver.hooks.shared`); a trigger itself holds only its ids, deadline
    and a few numbers. Triggers created together do not poll together: the first poll waits
    :func:`~airflow_mlserver.executions.waiting.first_wait`, at most 20 ms for a trigger alone and up to one
    ``poll_interval`` for a thousand.
    """

    def __init__(
        self,
        mlserver_conn_id: str,
        service_name: str,
        service_version: str,
        execution_ids: list[str],
        poll_interval: float = 10.0,
        deadline: float | None = None,
        cancel_on_kill: bool = True,
        progress_interval: float = PROGRESS_INTERVAL,
        labels: dict[str, str] | None = None,
        started: dict[str, float] | None = None,
        map_index: int | None = None,
        until: Until | str = ALL,
        unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT,
    ) -> None:
        super().__init__()
        self.mlserver_conn_id = mlserver_conn_id
        self.service_name = service_name
        self.service_version = service_version
        self.execution_ids = list(execution_ids)
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self.progress_interval = progress_interval
        self.labels = dict(labels or {})
        self.started = dict(started or {})
        self.map_index = map_index
        self.until = Until(until)  # a trigger an earlier release stored passes the text
        self.unreachable_timeout = float(unreachable_timeout)  # an earlier release stored none: the default
        self._seen: dict[str, Seen] = {}  # when polls first saw each execution run and finish: for the event

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "mlserver_conn_id": self.mlserver_conn_id,
            "service_name": self.service_name,
            "service_version": self.service_version,
            "execution_ids": self.execution_ids,
            "poll_interval": self.poll_interval,
            "deadline": self.deadline,
            "cancel_on_kill": self.cancel_on_kill,
            "progress_interval": self.progress_interval,
            "labels": self.labels,
            "started": self.started,
            "map_index": self.map_index,
            "until": self.until.value,
        }
        if (
            self.unreachable_timeout != DEFAULT_UNREACHABLE_TIMEOUT
        ):  # the default stores as earlier releases did
            kwargs["unreachable_timeout"] = self.unreachable_timeout
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def _event(
        self,
        status: Outcome,
        message: str,
        statuses: dict[str, BatchStatus],
        complete: list[str] | None = None,
        execution_id: str | None = None,
        unreachable: bool = False,
    ) -> TriggerEvent:
        event = BatchEvent(
            status=status,
            message=message,
            service_name=self.service_name,
            service_version=self.service_version,
            execution_ids=tuple(self.execution_ids),
            executions={eid: Counts.of(s) for eid, s in statuses.items()},
            complete=tuple(complete or ()),
            execution_id=execution_id,
            unreachable=unreachable,
            seen=self._seen,
        )
        return TriggerEvent(event.to_payload())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = await acquire(self.mlserver_conn_id)
        except MLServerError as exc:  # the connection's settings are wrong: no poll would read anything
            yield self._event(Outcome.ERROR, str(exc), {})
            return
        try:
            key = "\n".join(self.execution_ids)
            await asyncio.sleep(
                first_wait(key, self.poll_interval, sharing(self.mlserver_conn_id), self.deadline)
            )
            async for event in self._watch(hook):
                yield event
                return
        finally:
            await release(hook)

    async def _watch(self, hook: MLServerHook) -> AsyncIterator[TriggerEvent]:
        statuses: dict[str, BatchStatus] = {}
        pending = list(self.execution_ids)
        prefix = map_prefix(self.map_index)
        progress = ProgressLog(self.log, self.labels, self.started, prefix, self.progress_interval)
        watch = OutageWatch(
            self.log,
            self.unreachable_timeout,
            waited_for(self.execution_ids, self.service_name, self.service_version),
            prefix,
        )
        backoff = self.poll_interval
        while True:
            began = time.monotonic()
            try:
                for execution_id in list(pending):
                    status = await hook.async_get_batch(self.service_name, self.service_version, execution_id)
                    if statuses.get(execution_id) != status:
                        # kept only when it changed: an unchanged poll then leaves nothing behind that would live
                        # long enough to make the process's full garbage collections (a pause of the whole
                        # triggerer's loop, 100-200 ms on its heap) come more often
                        statuses[execution_id] = status
                    ending = outcome(status)
                    if ending is Outcome.COMPLETE:
                        pending.remove(execution_id)
                    elif ending is not None:
                        yield self._event(
                            ending,
                            ended_message(execution_id, self.service_name, self.service_version, status),
                            statuses,
                            execution_id=execution_id,
                        )
                        return
                watch.readable(time.monotonic())
                observe(self._seen, statuses.values(), time.time())
                backoff = self.poll_interval
            except MLServerError as exc:
                # the server cannot be read for now (the state is unknown, not failed), or the input is wrong
                verdict = watch.failed(exc, began, time.monotonic())
                if verdict is PERMANENT:
                    yield self._event(Outcome.ERROR, str(exc), statuses)
                    return
                if verdict is GIVE_UP and not deadline_passed(self.deadline):  # else the timeout, below
                    yield self._event(
                        Outcome.ERROR, watch.message(time.monotonic()), statuses, unreachable=True
                    )
                    return
                backoff = min(max(backoff * 2, 1.0), max(self.poll_interval, 60.0))
            if len(statuses) == len(self.execution_ids) and wait_over(list(statuses.values()), self.until):
                complete = [e for e in self.execution_ids if e not in pending]
                yield self._event(
                    Outcome.COMPLETE,
                    f"{count(len(complete))} of {plural(len(self.execution_ids), 'batch execution')} of web service "
                    f"'{self.service_name}' version '{self.service_version}' complete",
                    statuses,
                    complete=complete,
                )
                return
            if statuses and watch.outage is None:  # while unreadable, the outage's lines say so
                progress([statuses[e] for e in self.execution_ids if e in statuses])
            if deadline_passed(self.deadline):
                yield self._timeout_event(statuses)
                return
            await asyncio.sleep(watch.sleep(sleep_time(backoff, self.deadline), time.monotonic()))

    def _timeout_event(self, statuses: dict[str, BatchStatus]) -> TriggerEvent:
        done, total = sum(s.completed for s in statuses.values()), sum(s.total for s in statuses.values())
        return self._event(
            Outcome.TIMEOUT,
            f"The batch did not finish before its timeout: {count(done)}/{plural(total, 'record')} done",
            statuses,
        )

    async def on_kill(self) -> None:
        """A user killed the task: cancel each watched execution once (only if ``cancel_on_kill``)."""
        if not self.cancel_on_kill:
            return
        async with shared_hook(self.mlserver_conn_id) as hook:
            for execution_id in self.execution_ids:
                try:
                    status = await hook.async_cancel_batch(
                        self.service_name, self.service_version, execution_id
                    )
                    self.log.info("Canceled batch execution %s on kill (now %s)", execution_id, status.state)
                except MLServerError as exc:
                    self.log.warning("Could not cancel batch execution %s on kill: %s", execution_id, exc)
