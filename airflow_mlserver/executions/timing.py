"""When a poll first saw each execution running and finished: the only times a Machine Learning Server lets a
client know, since its answers carry no timestamps.

A poll that first sees an execution ``Running`` bounds the end of its wait as ``Pending`` from above, and one
that first sees it finished bounds its end likewise; both are late by up to one poll interval. So every time
derived from them is "about", and whoever shows one says so. :func:`observe` is the one rule; the trigger,
the wait in a worker and the batch operator's driver all apply it and hand on what they saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus


@dataclass
class Seen:
    """What polls saw of one execution (Unix timestamps, None until seen).

    :param running: The first poll that saw it running (or finished after records were done while running).
    :param ended: The first poll that saw it finished.
    """

    running: float | None = None
    ended: float | None = None

    def to_payload(self) -> dict[str, float]:
        return {k: v for k, v in (("running", self.running), ("ended", self.ended)) if v is not None}

    @classmethod
    def from_payload(cls, value: Any) -> Seen:
        """Read what :meth:`to_payload` wrote; anything else (an earlier release's event) reads as unseen."""
        if not isinstance(value, Mapping):
            return cls()
        return cls(_time(value.get("running")), _time(value.get("ended")))

    def merge(self, other: Seen) -> None:
        """Keep the earlier of each time (two observers of one execution: the trigger and the driver)."""
        self.running = _earlier(self.running, other.running)
        self.ended = _earlier(self.ended, other.ended)


def observe(seen: MutableMapping[str, Seen], statuses: Iterable[BatchStatus], now: float) -> None:
    """Note, for each status, the first time an execution was seen running and the first time finished."""
    for status in statuses:
        entry = seen.setdefault(status.execution_id, Seen())
        if status.is_finished:
            entry.ended = entry.ended if entry.ended is not None else now
        elif entry.running is None and (status.state.strip().lower() != "pending" or status.completed):
            entry.running = now


def observed(statuses: Iterable[BatchStatus], now: float) -> dict[str, Seen]:
    """What one poll's statuses show, on their own."""
    seen: dict[str, Seen] = {}
    observe(seen, statuses, now)
    return seen


def seen_payload(seen: Mapping[str, Seen]) -> dict[str, dict[str, float]]:
    """Plain JSON of what was seen, executions with nothing seen left out."""
    return {eid: payload for eid, s in seen.items() if (payload := s.to_payload())}


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _earlier(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
