"""The wait in a worker's own thread (the batch operator with ``deferrable=False``, the artifacts operator): it
sleeps between polls, so it never runs on the triggerer; the trigger waits by the same rules in its event loop:
:mod:`~airflow_mlserver.executions.waiting`'s for the executions, :mod:`~airflow_mlserver.executions.outage`'s
for a server that cannot be read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING

from airflow_mlserver.client.errors import MLServerConnectionError, MLServerError
from airflow_mlserver.executions.outage import (
    DEFAULT_UNREACHABLE_TIMEOUT,
    GIVE_UP,
    PERMANENT,
    OutageWatch,
    WarningLog,
    waited_for,
)
from airflow_mlserver.executions.timing import Seen, observe
from airflow_mlserver.executions.waiting import ALL, Until, deadline_passed, sleep_time, wait_over

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus
    from airflow_mlserver.hooks.mlserver import MLServerHook

_log = logging.getLogger(__name__)


def wait_for_executions(
    hook: MLServerHook,
    service_name: str,
    service_version: str,
    execution_ids: Sequence[str],
    poll_interval: float,
    deadline: float | None,
    on_poll: Callable[[list[BatchStatus]], None],
    until: Until = ALL,
    *,
    unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT,
    log: WarningLog | None = None,
    prefix: str = "",
    seen: MutableMapping[str, Seen] | None = None,
) -> list[BatchStatus]:
    """Poll in this thread until :func:`wait_over` (every execution finished, or the first with ``until``
    :data:`FIRST`; one failed or was canceled) or the deadline passed.

    Answers the last statuses, in the order of ``execution_ids``; what to raise is the caller's. ``on_poll``
    sees the statuses of each round that goes on waiting: a
    :class:`~airflow_mlserver.executions.progress.ProgressLog` there logs progress once a minute.

    While the server cannot be read the wait goes on (:mod:`~airflow_mlserver.executions.outage`), saying so in
    ``log`` once a minute (``prefix`` first), for up to ``unreachable_timeout`` seconds: then it raises
    :class:`~airflow_mlserver.client.errors.MLServerConnectionError` naming the outage's length and the last
    error. An error that says the input is wrong (an unknown execution, refused credentials) is raised at
    once. When the deadline passes during an outage the wait ends with the statuses of the last round that
    read them (the caller's own check of the deadline then fails the task); before any, the error is raised.
    Each poll's times go to ``seen`` (:func:`~airflow_mlserver.executions.timing.observe`), if given.
    """
    watch = OutageWatch(
        log or _log,
        unreachable_timeout,
        waited_for(tuple(execution_ids), service_name, service_version),
        prefix,
    )
    statuses: list[BatchStatus] | None = None
    while True:
        began = time.monotonic()
        try:
            statuses = [hook.get_batch(service_name, service_version, e) for e in execution_ids]
        except MLServerError as exc:
            now = time.monotonic()
            verdict = watch.failed(exc, began, now)
            if verdict is PERMANENT:
                raise
            if deadline_passed(deadline) and statuses is not None:
                return statuses  # the task's timeout came first: the caller's check of it fails the task
            if verdict is GIVE_UP:
                raise MLServerConnectionError(watch.message(now)) from exc
            if deadline_passed(deadline):
                raise
            time.sleep(watch.sleep(sleep_time(poll_interval, deadline), time.monotonic()))
            continue
        watch.readable(time.monotonic())
        if seen is not None:
            observe(seen, statuses, time.time())
        if wait_over(statuses, until) or deadline_passed(deadline):
            return statuses
        on_poll(statuses)
        time.sleep(sleep_time(poll_interval, deadline))
