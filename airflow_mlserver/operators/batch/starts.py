"""Starting the batch operator's executions so that no crash window starts one twice or takes another's.

Before each start the operator stores a :class:`~airflow_mlserver.operators.batch.state.StartIntent` (which
part of which round, how many records, the start's idempotency key, and, where the server does not honour keys,
the service's execution ids just before); once the start answers, its execution id replaces the intent in one
write. A worker killed in between (the answer still in flight, or between the two writes) leaves the intent, and
the next try settles it before it starts anything, by the client's one rule
(:mod:`~airflow_mlserver.client.reconcile`):

- the server honours keys: the start is sent again with the intent's key; the server answers the execution the
  earlier try's start created, if it created one (adopted), or starts it now;
- it does not (a real Machine Learning Server), or the intent is an earlier release's (no key): the new
  executions of that many records are candidates, and one is adopted only when its results for a sample of the
  part's records show it is this part's; none means the start never reached the server, and the part is
  started; anything else fails with :class:`~airflow_mlserver.exceptions.AmbiguousStartError` naming them.

So a mapped sibling's or another run's execution of the same size is never taken for this part's. An execution
that is new but already failed or canceled counts as none (the part is started again, as for an earlier try's
failed execution), so a user who cancels all candidates but one resolves an ambiguity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_mlserver.client.starting import new_key
from airflow_mlserver.client.words import plural
from airflow_mlserver.operators.batch.state import BatchState, Part, StartIntent, StateStore

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import WebService
    from airflow_mlserver.executions.progress import InfoLog
    from airflow_mlserver.hooks.mlserver import MLServerHook


@dataclass(frozen=True)
class Clock:
    """The time the driver and the starts read (a test's model of the server passes its own)."""

    now: Callable[[], float] = time.time


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
    ``extra_columns`` rule was applied to every record before anything was sent. The service's executions are
    listed once (for the intent and the client alike), and not at all where the server honours keys.
    """
    keyed = hook.honours_idempotency_keys(service.name, service.version)
    before = [] if keyed else hook.list_batch_executions(service.name, service.version)
    intent = StartIntent(number, part, len(records), before, clock.now(), new_key())
    state.intent = intent
    state.save(store)  # from here until the id is stored, a new try settles the intent instead of starting
    execution_id = hook.start_batch(
        service.name,
        service.version,
        records,
        parallel_count,
        service=service,
        extra_columns="ignore",
        idempotency_key=intent.key,
        before=None if keyed else before,
    )
    stored = state.rounds[number].parts[part]
    stored.execution_id, stored.started = execution_id, intent.at
    state.intent = None
    state.save(store)
    return execution_id


def settle_intent(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    store: StateStore | None,
    records: pd.DataFrame,
    parallel_count: int,
    label: str,
    prefix: str,
    log: InfoLog,
    clock: Clock = Clock(),
) -> None:
    """An earlier try stopped while starting ``label`` (whose input records are ``records``): adopt the execution
    it created, or start the part now where the server's answer to the same key does; else leave it to start.

    ``prefix`` starts each log line (a mapped task's map index); the settled state is stored.
    """
    intent, part = state.intent, _intent_part(state)
    if intent is not None and part is not None and part.execution_id is None:
        if intent.key is not None and hook.honours_idempotency_keys(service.name, service.version):
            execution_id, earlier = hook.resend_start(service, records, parallel_count, intent.key)
            part.execution_id, part.started = execution_id, intent.at if earlier else clock.now()
        else:
            look_until = (
                intent.at + hook.settings.timeout
            )  # the earlier try's start may still arrive until then
            found = hook.find_started_batch(
                service, records, intent.before, state.execution_ids(), look_until, label
            )
            earlier, execution_id = found is not None, found or ""
            if found is not None:
                part.execution_id, part.started = found, intent.at
        _log_settled(log, prefix, label, execution_id, earlier, len(records))
    state.intent = None
    state.save(store)


def _intent_part(state: BatchState) -> Part | None:
    """The part the stored intent names, if it still exists."""
    intent = state.intent
    if (
        intent is None
        or intent.round >= len(state.rounds)
        or intent.part >= len(state.rounds[intent.round].parts)
    ):
        return None
    return state.rounds[intent.round].parts[intent.part]


def _log_settled(
    log: InfoLog, prefix: str, label: str, execution_id: str, earlier: bool, records: int
) -> None:
    if earlier:
        log.info(
            "%sAdopted batch execution %s for %s: an earlier try started it and was stopped before it stored its id",
            prefix,
            execution_id,
            label,
        )
        return
    log.info(
        "%sAn earlier try was stopped while it started %s, and the server has no execution of it: starting it",
        prefix,
        label,
    )
    if execution_id:  # started now, with the earlier try's key
        log.info(
            "%sStarted batch execution %s for %s (%s)",
            prefix,
            execution_id,
            label,
            plural(records, "record"),
        )
