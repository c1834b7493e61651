"""The artifacts operator's wait for its executions: their statuses once all have finished, or now.

The polling, the deadline and the progress lines are those of every wait on executions
(:func:`~airflow_mlserver.executions.polling.wait_for_executions`); which executions are still waited for and
the message of a timeout are decided in :mod:`~airflow_mlserver.operators.artifacts.plan`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from airflow_mlserver.exceptions import ExecutionWaitTimeoutError
from airflow_mlserver.executions.outage import DEFAULT_UNREACHABLE_TIMEOUT, WarningLog
from airflow_mlserver.executions.polling import wait_for_executions
from airflow_mlserver.executions.progress import ProgressLog, chunk_label
from airflow_mlserver.executions.waiting import deadline_passed
from airflow_mlserver.operators.artifacts.plan import late_message, unfinished

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus
    from airflow_mlserver.hooks.mlserver import MLServerHook


def statuses_once_finished(
    hook: MLServerHook,
    name: str,
    version: str,
    ids: Sequence[str],
    *,
    wait_for_completion: bool,
    poll_interval: float,
    timeout: float | None,
    log: WarningLog,
    unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT,
) -> list[BatchStatus]:
    """The executions' statuses once all have finished (or now, without ``wait_for_completion``), in the order of
    ``ids``; :class:`~airflow_mlserver.exceptions.ExecutionWaitTimeoutError` when ``timeout`` seconds pass first,
    :class:`~airflow_mlserver.exceptions.MLServerConnectionError` when the server cannot be read for
    ``unreachable_timeout`` seconds (see :mod:`~airflow_mlserver.executions.outage`).
    """
    if not wait_for_completion:
        return [hook.get_batch(name, version, e) for e in ids]
    started = time.monotonic()
    deadline = time.time() + timeout if timeout is not None else None
    labels = {e: chunk_label(i, len(ids), False) for i, e in enumerate(ids)} if len(ids) > 1 else {}
    # once a minute; a pending execution says how long it has waited
    progress = ProgressLog(log, labels)
    statuses: dict[str, BatchStatus] = {}
    waiting = list(ids)
    while waiting:  # a wait ends early when one execution ends (fails): wait on for the others
        polled = wait_for_executions(
            hook, name, version, waiting, poll_interval, deadline, progress,
            unreachable_timeout=unreachable_timeout, log=log,
        )  # fmt: skip
        statuses.update(zip(waiting, polled, strict=True))
        waiting = unfinished(waiting, statuses)
        if waiting and timeout is not None and deadline_passed(deadline):
            raise ExecutionWaitTimeoutError(
                late_message(waiting, statuses, time.monotonic() - started, timeout, f"{name}/{version}")
            )
    return [statuses[e] for e in ids]
