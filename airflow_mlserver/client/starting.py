"""Starting a batch so that it is never started twice, and no one else's execution is ever taken for it.

:class:`Starter` sends a start with its idempotency key and, when the answer is lost, applies
:mod:`~airflow_mlserver.client.reconcile`'s rule: a server that honours keys is sent the start again with the
same key; otherwise the candidates are looked at (:meth:`Starter.find`) and judged by
:func:`~airflow_mlserver.client.reconcile.judge`. The batch operator calls :meth:`Starter.find` too, after a
worker died between its intent and its stored id, so both follow one rule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.errors import AmbiguousStartError
from airflow_mlserver.client.protocol import AmbiguousSend
from airflow_mlserver.client.reconcile import Adopt, Ambiguous, Candidate, judge, outcome, sample_indexes
from airflow_mlserver.client.words import plural

if TYPE_CHECKING:
    from airflow_mlserver.client.mlserver import MLServerClient
    from airflow_mlserver.client.models import BatchStatus, WebService

#: Longest sleep between two looks at the service's executions while an earlier start may still arrive.
LOOK_AGAIN = 2.0


def new_key() -> str:
    """A new idempotency key: one per start, sent again only with that start."""
    return uuid.uuid4().hex


class Starter:
    """The starts of one client."""

    def __init__(self, client: MLServerClient) -> None:
        self.client = client

    def honours_keys(self, name: str, version: str) -> bool:
        """Whether the server honours idempotency keys (asked with a cheap call when none of its answers said)."""
        known = self.client.calls.honours_keys()
        if known is None:
            self.client.get_service(name, version)
            known = self.client.calls.honours_keys()
        return bool(known)

    def start(
        self,
        service: WebService,
        records: list[dict[str, Any]],
        parallel_count: int,
        key: str | None = None,
        before: Sequence[str] | None = None,
    ) -> str:
        """Start a batch of the checked ``records``; answer its execution id (see the module's docstring).

        :param key: The start's idempotency key (a new one by default).
        :param before: The service's execution ids just before, when the caller has them (saves listing them).
        """
        name, version = service.name, service.version
        key = key or new_key()
        keyed = self.honours_keys(name, version)
        if before is None and not keyed:
            before = self.client.list_batch_executions(name, version)
        return self.send(service, records, parallel_count, key, before, keyed)[0]

    def send(
        self,
        service: WebService,
        records: list[dict[str, Any]],
        parallel_count: int,
        key: str,
        before: Sequence[str] | None,
        keyed: bool,
    ) -> tuple[str, bool]:
        """Send the start until it is answered, by the rule; answer the execution id and whether it is an earlier
        send's (the server said it answered an earlier send of ``key``, or its results showed it)."""
        name, version, settings = service.name, service.version, self.client.settings
        reason = ""
        for _ in range(settings.max_retries + 1):
            try:
                return self.client.run(
                    self.client.calls.send_start(name, version, records, parallel_count, key)
                )
            except AmbiguousSend as exc:
                reason = exc.reason
            if keyed:
                self.client.log.warning(
                    "Starting the batch failed after sending (%s); sending it again with the same idempotency key",
                    reason,
                )
                continue
            label = f"a batch of web service '{name}' version '{version}'"
            found = self.find(
                service, records, before or (), (), time.time() + min(settings.timeout, 5.0), label
            )
            if found is not None:
                self.client.log.warning(
                    "Starting the batch failed after sending (%s); adopting execution %s, the one it created",
                    reason,
                    found,
                )
                return found, True
            self.client.log.warning(
                "Starting the batch failed before the server acted on it (%s); sending it again", reason
            )
        created = (
            "if the server created it, a retry with the same key answers it" if keyed else "none was created"
        )
        raise AmbiguousStartError(
            f"Starting a batch of web service '{name}' version '{version}' kept failing ({reason}); {created}. "
            "Retry later."
        )

    def find(
        self,
        service: WebService,
        records: Sequence[dict[str, Any]],
        before: Collection[str],
        exclude: Collection[str],
        look_until: float,
        label: str,
    ) -> str | None:
        """The execution a start of ``records`` whose answer was lost created, proven; None when it created
        none; :class:`AmbiguousStartError` when that cannot be told.

        :param before: The service's execution ids just before the start.
        :param exclude: Executions known to be someone else's (the caller's other parts).
        :param look_until: While no candidate shows, look again until then (the start may still arrive).
        :param label: What was being started, for the error (``chunk 2 of 3``).
        """
        candidates = self._candidates(service, len(records), set(before) | set(exclude), look_until)
        if not candidates:
            return None
        samples = sample_indexes(len(records))
        finished = [self._finished(service, s) for s in candidates]
        candidates = [s for s in finished if not (s.is_failed or s.is_canceled)]  # ended meanwhile: not it
        if not candidates:
            return None
        expected = [self._consume(service, records[i]) for i in samples]
        again = [self._consume(service, records[i]) for i in samples]
        judged = [Candidate(s.execution_id, self._sample(service, s, samples)) for s in candidates]
        verdict = judge(judged, expected, again)
        if isinstance(verdict, Adopt):
            return verdict.execution_id
        if isinstance(verdict, Ambiguous):
            raise AmbiguousStartError(
                _ambiguous(service, label, len(records), candidates, verdict), verdict.candidates
            )
        return None

    def _candidates(
        self, service: WebService, count: int, known: set[str], look_until: float
    ) -> list[BatchStatus]:
        """The new executions of ``count`` records that have not ended; looked at again while none shows."""
        client = self.client
        while True:
            found = []
            for execution_id in client.list_batch_executions(service.name, service.version):
                if execution_id in known:
                    continue
                status = client.get_batch(service.name, service.version, execution_id)
                if status.total != count:
                    known.add(execution_id)  # another batch's: its record count never changes
                elif not (status.is_failed or status.is_canceled):
                    found.append(status)
            if found or time.time() >= look_until:
                return found
            time.sleep(min(LOOK_AGAIN, max(0.0, look_until - time.time())))

    def _consume(self, service: WebService, record: dict[str, Any]) -> tuple[bool, Any]:
        result = self.client.consume(service.name, service.version, record, service)
        return outcome(result.success, result.outputs)

    def _finished(self, service: WebService, status: BatchStatus) -> BatchStatus:
        """The candidate's status once it has finished, waited for up to the connection's timeout (its results
        are compared only then: partial results are the records finished so far, not by their number)."""
        deadline = time.time() + self.client.settings.timeout
        while not status.is_finished and time.time() < deadline:
            time.sleep(min(LOOK_AGAIN, max(0.0, deadline - time.time())))
            status = self.client.get_batch(service.name, service.version, status.execution_id)
        return status

    def _sample(
        self, service: WebService, status: BatchStatus, indexes: Sequence[int]
    ) -> tuple[tuple[bool, Any], ...] | None:
        """The complete candidate's outcomes for the sampled records; None while it has not finished."""
        client, name, version = self.client, service.name, service.version
        if not status.is_complete:
            return None
        wanted, found = set(indexes), {}
        for i, result in enumerate(client.iter_batch_results(name, version, status.execution_id)):
            if i in wanted:
                found[i] = outcome(result.success, result.outputs)
            if len(found) == len(wanted):
                break
        return tuple(found[i] for i in indexes) if len(found) == len(wanted) else None


def _ambiguous(
    service: WebService, label: str, count: int, candidates: Sequence[BatchStatus], verdict: Ambiguous
) -> str:
    ids = ", ".join(s.execution_id for s in candidates)
    return (
        f"The start of {label} ({plural(count, 'record')}) on web service '{service.name}' version "
        f"'{service.version}' may have created an execution, and the service has "
        f"{plural(len(candidates), 'new execution')} of {plural(count, 'record')} that could be it: {ids}. "
        f"Cannot tell which one is the execution of {label}: {verdict.why}. None is adopted and none is started. "
        "Check them (get_batch) and cancel those that are not, then retry: the one left is adopted if its results "
        "show it is this start's, and the start is sent again if all are canceled."
    )
