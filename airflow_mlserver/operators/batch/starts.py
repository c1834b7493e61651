"""Starting the batch operator's executions so that no crash window starts one twice.

Before each start the operator stores a :class:`~airflow_mlserver.operators.batch.state.StartIntent` (which
part of which round, how many records, the service's execution ids just before); once the start answers, its
execution id replaces the intent in one write. A worker killed in between (the answer still
in flight, or between the two writes) leaves the intent, and the next try reconciles against the server before
it starts anything: the one new execution that carries that many records is adopted; none means the start never
reached the server, and the part is started; several fail with
:class:`~airflow_mlserver.exceptions.AmbiguousStartError` naming them.

An execution that is new but already failed or canceled counts as none (the part is started again, as for an
earlier try's failed execution), so a user who cancels all candidates but one resolves an ambiguity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_mlserver.exceptions import AmbiguousStartError
from airflow_mlserver.executions.waiting import ended
from airflow_mlserver.operators.batch.state import BatchState, StartIntent, StateStore

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import WebService
    from airflow_mlserver.executions.progress import InfoLog
    from airflow_mlserver.hooks.mlserver import MLServerHook

#: Longest sleep between two looks at the service's executions while an earlier start may still arrive.
RECONCILE_POLL = 2.0


@dataclass(frozen=True)
class Clock:
    """The time and the sleep the starts use (a test's model of the server passes its own)."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def start_execution(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    store: StateStore | None,
    number: int,
    part: int,
    records: pd.DataFrame,
    parallel_count: int,
    clock: Clock = Clock(),
) -> str:
    """Start the execution of part ``part`` of round ``number``: the intent stored first, then the id in its place.

    The client checks and encodes ``records`` in one pass and sends only the declared inputs; the task's
    ``extra_columns`` rule was applied to every record before anything was sent.
    """
    before = hook.list_batch_executions(service.name, service.version)
    state.intent = StartIntent(number, part, records=len(records), before=before, at=clock.now())
    state.save(store)  # from here until the id is stored, a new try reconciles instead of starting
    execution_id = hook.start_batch(
        service.name, service.version, records, parallel_count, service=service, extra_columns="ignore"
    )
    stored = state.rounds[number].parts[part]
    stored.execution_id, stored.started = execution_id, state.intent.at
    state.intent = None
    state.save(store)
    return execution_id


def reconcile(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    intent: StartIntent,
    label: str,
    clock: Clock = Clock(),
) -> str | None:
    """The execution an earlier try's unfinished start created, or None when it created none.

    New executions are those the service has now and had not at the intent, other than this batch's own; the
    candidates are those of them that carry the intent's record count and have not ended. While the earlier
    try's request could still reach the server (until the connection's timeout after the intent) an empty
    answer is looked at again.
    """
    known = set(intent.before) | set(state.execution_ids())
    wait_until = intent.at + hook.settings.timeout
    while True:
        candidates = []
        for execution_id in hook.list_batch_executions(service.name, service.version):
            if execution_id in known:
                continue
            status = hook.get_batch(service.name, service.version, execution_id)
            if status.total != intent.records:
                known.add(execution_id)  # another batch's: its record count never changes
            elif not ended(status):
                candidates.append(execution_id)
        if len(candidates) > 1:
            raise AmbiguousStartError(
                f"An earlier try of this task was stopped while it started the batch execution of {label} "
                f"({intent.records} records) on web service '{service.name}' version '{service.version}', and "
                f"the service now has {len(candidates)} new executions of {intent.records} records: "
                f"{', '.join(candidates)}. Cannot tell which one is the execution of {label}, so none is adopted "
                "and none is started. Cancel those that are not (with cancel_batch or on the server) and retry the "
                f"task: it adopts the one left, or starts {label} again if all are canceled.",
                tuple(candidates),
            )
        if candidates or clock.now() >= wait_until:
            return candidates[0] if candidates else None
        clock.sleep(min(RECONCILE_POLL, max(0.0, wait_until - clock.now())))


def settle_intent(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    store: StateStore | None,
    label: str,
    prefix: str,
    log: InfoLog,
    clock: Clock = Clock(),
) -> None:
    """An earlier try stopped while starting ``label``: adopt the execution it created, if it created one.

    ``prefix`` starts each log line (a mapped task's map index); the settled state is stored.
    """
    intent = state.intent
    part = None
    if (
        intent is not None
        and intent.round < len(state.rounds)
        and intent.part < len(state.rounds[intent.round].parts)
    ):
        part = state.rounds[intent.round].parts[intent.part]
    if intent is not None and part is not None and part.execution_id is None:
        adopted = reconcile(hook, service, state, intent, label, clock)
        if adopted is not None:
            part.execution_id, part.started = adopted, intent.at
            log.info(
                "%sAdopted batch execution %s for %s: an earlier try started it and was stopped before it stored "
                "its id",
                prefix,
                adopted,
                label,
            )
        else:
            log.info(
                "%sAn earlier try was stopped while it started %s, and the server has no execution of it: "
                "starting it",
                prefix,
                label,
            )
    state.intent = None
    state.save(store)
