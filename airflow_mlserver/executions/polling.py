"""The wait in a worker's own thread (the batch operator with ``deferrable=False``, the artifacts operator): it
sleeps between polls, so it never runs on the triggerer; the trigger waits by the same rule in its event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from airflow_mlserver.executions.waiting import ALL, Until, deadline_passed, sleep_time, wait_over

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus
    from airflow_mlserver.hooks.mlserver import MLServerHook


def wait_for_executions(
    hook: MLServerHook,
    service_name: str,
    service_version: str,
    execution_ids: Sequence[str],
    poll_interval: float,
    deadline: float | None,
    on_poll: Callable[[list[BatchStatus]], None],
    until: Until = ALL,
) -> list[BatchStatus]:
    """Poll in this thread until :func:`wait_over` (every execution finished, or the first with ``until``
    :data:`FIRST`; one failed or was canceled) or the deadline passed.

    Answers the last statuses, in the order of ``execution_ids``; what to raise is the caller's. ``on_poll``
    sees the statuses of each round that goes on waiting: a
    :class:`~airflow_mlserver.executions.progress.ProgressLog` there logs progress once a minute.
    """
    while True:
        statuses = [hook.get_batch(service_name, service_version, e) for e in execution_ids]
        if wait_over(statuses, until) or deadline_passed(deadline):
            return statuses
        on_poll(statuses)
        time.sleep(sleep_time(poll_interval, deadline))
