"""An event trigger for ``AssetWatcher``: one event per batch execution of a service that finishes.

Batches are often started outside Airflow (R and Python sessions, other tools). Watching the service's
executions turns each one that finishes into an asset event, so that a DAG scheduled on the asset runs once per
finished execution::

    from airflow.sdk import Asset, AssetWatcher

    from airflow_mlserver.triggers.executions import MLServerBatchExecutionsTrigger

    finished = Asset(
        "mlserver://TxService/1.0/batch-executions",
        watchers=[
            AssetWatcher(
                name="txservice_batches",
                trigger=MLServerBatchExecutionsTrigger(service_name="TxService", service_version="1.0"),
            )
        ],
    )

Each event's payload (the asset event's ``extra["payload"]``) is ``{"execution_id", "state", "total",
"completed", "failed", "service_name", "service_version"}``: the state as the server spells it (``Complete``,
``Failed``, ``Canceled``), the record counts of its last status.

**What is guaranteed.** Which executions are announced, and what is remembered, is
:mod:`airflow_mlserver.executions.finished`'s rule. The trigger remembers the executions it has taken care of in
the asset's state store (key :data:`STORE_KEY`, through the triggerer; every watched asset's store when one
trigger watches several assets), and stores what it will announce *before* it announces it. So:

* an execution is announced at most once per asset, across triggerer restarts, moves to another triggerer
  and changes of ``poll_interval`` (another connection, service version or ``states`` starts from nothing);
* an execution that finishes while no triggerer runs the trigger is announced when a triggerer runs it again,
  as long as the server still lists it;
* the executions already finished when the trigger first runs on an asset (nothing stored yet) are taken as
  taken care of and never announced: only those that finish afterwards are;
* not guaranteed: an event is lost (never announced) if the triggerer dies between storing and handing the event
  to Airflow (a second or so), or if the asset's state store is cleared (the executions finished by then are
  taken as taken care of again). With no state store (the trigger run outside a triggerer, or on an asset the
  triggerer gives none), it remembers in memory only: a restart then starts from nothing, and executions that
  finished while it was down are never announced.

**One poll per service.** Triggers of one connection, service version and poll interval (watchers of other
assets, or of other ``states``) share one poll in the triggerer (``shared_stream_key``): it lists the executions
every ``poll_interval`` seconds and reads the status of each execution not yet seen finished (a finished one
never changes); each trigger then applies the rule with its own memory. Every round is a whole listing, so a
trigger that joins a running poll misses nothing. A server that cannot be read, or a service not published
(yet), is logged once a minute and polled again: the trigger never ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_mlserver.client.errors import MLServerApiError
from airflow_mlserver.client.words import count, plural
from airflow_mlserver.exceptions import MLServerError
from airflow_mlserver.executions.finished import (
    FINISHED,
    Announced,
    Listing,
    finished_payload,
    known_after,
    plan,
    to_poll,
)
from airflow_mlserver.executions.outage import OUTAGE_LOG_INTERVAL
from airflow_mlserver.executions.waiting import Outcome
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.hooks.shared import acquire, release

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: The state-store key the trigger remembers under: one per connection, service version and states, so that
#: watchers of one asset with other states each keep their own memory.
STORE_KEY = "mlserver_batch_executions/{conn_id}/{service_name}/{service_version}/{states}"

log = logging.getLogger(__name__)


class MLServerBatchExecutionsTrigger(BaseEventTrigger):
    """Fire one event per batch execution of a service version that finishes, whoever started it.

    For an ``AssetWatcher``: it runs until the triggerer stops it. What is and is not guaranteed (announced at
    most once, across triggerer restarts) is said in the module's documentation.

    :param service_name: The web service.
    :param service_version: Its version.
    :param mlserver_conn_id: The Airflow connection of the server.
    :param poll_interval: Seconds between two rounds of polls (a listing, then the status of each execution
        not yet finished); default 30.
    :param states: The outcomes that fire an event: ``"complete"``, ``"failed"``, ``"canceled"`` (default all
        three); executions that end otherwise are taken care of silently.
    """

    def __init__(
        self,
        service_name: str,
        service_version: str,
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        poll_interval: float = 30.0,
        states: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be above 0 seconds, not {poll_interval!r}")
        self.service_name = service_name
        self.service_version = service_version
        self.mlserver_conn_id = mlserver_conn_id
        self.poll_interval = float(poll_interval)
        self.states = _states(FINISHED if states is None else states)
        self._memory: Announced | None = None
        self._recalled = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "service_name": self.service_name,
            "service_version": self.service_version,
            "mlserver_conn_id": self.mlserver_conn_id,
            "poll_interval": self.poll_interval,
            "states": list(self.states),
        }

    def shared_stream_key(self) -> Hashable | None:
        """Triggers of one connection, service version and poll interval share one poll."""
        return (
            "mlserver-batch-executions",
            self.mlserver_conn_id,
            self.service_name,
            self.service_version,
            self.poll_interval,
        )

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Listing]:
        """Poll the service's executions every ``poll_interval`` seconds; yield each round as a :class:`Listing`."""
        conn_id = kwargs.get("mlserver_conn_id", MLServerHook.default_conn_name)
        interval = float(kwargs.get("poll_interval", 30.0))
        try:
            hook = await acquire(conn_id)  # the connection's one client in this loop
        except MLServerError:
            hook = MLServerHook(mlserver_conn_id=conn_id)  # a connection it cannot use: its rounds say why
        try:
            poll = _Poll(hook, kwargs["service_name"], kwargs["service_version"])
            while True:
                listing = await poll.round()
                if listing is not None:
                    yield listing
                await asyncio.sleep(interval)
        finally:
            await release(hook)

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """This trigger's events from the shared rounds: the rule applied with its own memory."""
        async for listing in shared_stream:
            for payload in await self._announce(listing):
                yield TriggerEvent(payload)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """The poll of its own, when the triggerer does not share it (and in tests)."""
        kwargs = self.serialize()[1]
        async for event in self.filter_shared_stream(type(self).open_shared_stream(kwargs)):
            yield event

    async def _announce(self, listing: Listing) -> list[dict[str, Any]]:
        """The payloads to fire after a round; what they change is stored first (nothing fires if it cannot be)."""
        if not self._recalled:
            try:
                self._memory = await self._recall()
            except Exception as exc:  # the state store is reached through the triggerer: any failure of it
                self.log.warning("Could not read what was announced (%s); reading it again next round", exc)
                return []
            self._recalled = True
        decided = plan(self._memory, listing, self.states)
        if decided.changed:
            try:
                await self._remember(decided.remember)
            except Exception as exc:
                self.log.warning("Could not store what is announced (%s); announcing it next round", exc)
                return []
            self._memory = decided.remember
        payloads = []
        for execution_id in decided.announce:
            status = listing.statuses[execution_id]
            self.log.info(
                "Batch execution %s of web service '%s' version '%s' finished %s (%s of %s done)",
                execution_id,
                self.service_name,
                self.service_version,
                status.state,
                count(status.completed),
                plural(status.total, "record"),
            )
            payloads.append(finished_payload(execution_id, status, self.service_name, self.service_version))
        return payloads

    @property
    def store_key(self) -> str:
        return STORE_KEY.format(
            conn_id=self.mlserver_conn_id,
            service_name=self.service_name,
            service_version=self.service_version,
            states=",".join(self.states),
        )

    def _stores(self) -> list[Any]:
        """The state store of each asset the trigger watches; none outside a triggerer."""
        store = self.asset_state_store
        if store is None:
            return []
        # one trigger watching several assets (the same arguments) is given all of them; Airflow's accessors
        # answer directly only for one, so each asset's own is taken
        each = [*getattr(store, "_by_name", {}).values(), *getattr(store, "_by_uri", {}).values()]
        return each or [store]

    async def _recall(self) -> Announced | None:
        stores = self._stores()
        if not stores:
            return self._memory  # in memory only
        found = [Announced.from_stored(await store.aget(self.store_key)) for store in stores]
        kept = [f.done for f in found if f is not None]
        return Announced(frozenset().union(*kept)) if kept else None

    async def _remember(self, memory: Announced) -> None:
        for store in self._stores():
            await store.aset(self.store_key, memory.to_stored())


def _states(states: Iterable[Outcome | str]) -> tuple[str, ...]:
    """The outcomes that fire, checked: only those of a finished execution."""
    chosen = tuple(dict.fromkeys(str(s).strip().lower() for s in states))
    allowed = [o.value for o in FINISHED]
    if not chosen or any(s not in allowed for s in chosen):
        raise ValueError(f"states must be some of {allowed}, not {list(states)!r}")
    return chosen


class _Poll:
    """One service's rounds: a listing, then the status of each execution not yet seen finished."""

    def __init__(self, hook: MLServerHook, service_name: str, service_version: str) -> None:
        self.hook = hook
        self.service_name = service_name
        self.service_version = service_version
        self.known: dict[str, BatchStatus] = {}  # finished executions: never read again
        self.failing: str | None = None  # the last error while the service cannot be read
        self.logged = -math.inf

    async def round(self) -> Listing | None:
        """A round; None when the service could not be read (logged once a minute)."""
        try:
            listed = tuple(
                await self.hook.async_list_batch_executions(self.service_name, self.service_version)
            )
            read = dict(self.known)
            for execution_id in to_poll(listed, self.known):
                try:
                    read[execution_id] = await self.hook.async_get_batch(
                        self.service_name, self.service_version, execution_id
                    )
                except MLServerApiError as exc:
                    if exc.status != 404:
                        raise  # else deleted since it was listed: left out of the round
        except MLServerError as exc:
            now = time.monotonic()
            if self.failing is None or now - self.logged >= OUTAGE_LOG_INTERVAL:
                log.warning(
                    "Could not read the batch executions of web service '%s' version '%s' (%s); polling on",
                    self.service_name,
                    self.service_version,
                    exc,
                )
                self.logged = now
            self.failing = str(exc)
            return None
        if self.failing is not None:
            log.info(
                "The batch executions of web service '%s' version '%s' can be read again",
                self.service_name,
                self.service_version,
            )
            self.failing = None
        self.known = known_after(listed, read)
        return Listing(listed, {e: read[e] for e in listed if e in read})
