"""Which finished batch executions a watcher of a whole service announces, and what it remembers between polls.

A watcher (:class:`~airflow_mlserver.triggers.executions.MLServerBatchExecutionsTrigger`) lists the executions of
one service version, reads the status of each one it has not yet seen finished, and announces each execution
once, when it has finished (complete, failed or canceled), whoever started it. This module is its rule, with
no I/O and no clock:

* :func:`to_poll`: which executions a round reads (listed, and not known finished: a finished execution never
  changes again), and :func:`known_after` what the poll keeps of the statuses it read;
* :func:`plan`: given what the watcher remembers (:class:`Announced`, or None when it remembers nothing) and a
  round's :class:`Listing`, the executions to announce now and what to remember from now on.

**The rule.** The watcher remembers the executions it has taken care of (``done``): those it announced, and
those already finished when it first listed the service. With nothing remembered (the first round ever, or a
watcher with no durable memory) every execution finished at that moment is taken care of without an
announcement: the executions of the past do not fire a flood of runs. From then on every finished execution
not yet taken care of is announced, once, if its state is one the watcher announces, and taken care of either
way. What it remembers is kept to the executions the server still lists, so it does not grow without end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_mlserver.executions.waiting import Outcome, outcome

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: The finished states a watcher announces by default: every one.
FINISHED = (Outcome.COMPLETE, Outcome.FAILED, Outcome.CANCELED)
#: The form of :meth:`Announced.to_stored`: its ``form`` key.
STORED_FORM = 1


@dataclass(frozen=True)
class Announced:
    """What a watcher remembers: the executions it has taken care of (announced, or finished at its first round).

    :param done: Their ids.
    """

    done: frozenset[str]

    def to_stored(self) -> dict[str, Any]:
        """The JSON value kept in the asset's state store."""
        return {"form": STORED_FORM, "done": sorted(self.done)}

    @classmethod
    def from_stored(cls, value: Any) -> Announced | None:
        """Read what :meth:`to_stored` wrote; None for nothing stored (or a value of another form)."""
        if not isinstance(value, Mapping) or value.get("form") != STORED_FORM:
            return None
        done = value.get("done")
        if not isinstance(done, list) or not all(isinstance(e, str) for e in done):
            return None
        return cls(frozenset(done))


@dataclass(frozen=True)
class Listing:
    """One round of a watcher's polls.

    :param listed: The execution ids the server listed, in its order.
    :param statuses: The status known of each listed execution (read this round, or finished before); an
        execution whose status could not be read is missing.
    """

    listed: tuple[str, ...]
    statuses: Mapping[str, BatchStatus]


@dataclass(frozen=True)
class Plan:
    """What a round decides.

    :param announce: The executions to announce now, in the server's order.
    :param remember: What to remember from now on.
    :param changed: Whether that differs from what was remembered (it must be stored before announcing).
    """

    announce: tuple[str, ...]
    remember: Announced
    changed: bool


def to_poll(listed: Iterable[str], known: Mapping[str, BatchStatus]) -> list[str]:
    """The listed executions whose status a round reads: those not known to have finished."""
    return [e for e in listed if e not in known or not known[e].is_finished]


def known_after(listed: Iterable[str], read: Mapping[str, BatchStatus]) -> dict[str, BatchStatus]:
    """What a poll keeps for its next round: the finished statuses of executions still listed."""
    return {e: read[e] for e in listed if e in read and read[e].is_finished}


def plan(memory: Announced | None, listing: Listing, states: Iterable[Outcome | str] = FINISHED) -> Plan:
    """The executions to announce after a round, and what to remember (the rule is the module's).

    :param memory: What the watcher remembers; None when it remembers nothing.
    :param listing: The round.
    :param states: The outcomes announced (complete, failed, canceled); other finished ones are only taken care of.
    """
    announced = {Outcome(s) for s in states}
    finished = [
        e for e in listing.listed if e in listing.statuses and outcome(listing.statuses[e]) is not None
    ]
    if memory is None:
        return Plan((), Announced(frozenset(finished)), True)
    new = [e for e in finished if e not in memory.done]
    announce = tuple(e for e in new if outcome(listing.statuses[e]) in announced)
    listed = set(listing.listed)
    done = frozenset({e for e in memory.done if e in listed} | set(new))
    return Plan(announce, Announced(done), done != memory.done)


def finished_payload(
    execution_id: str, status: BatchStatus, service_name: str, service_version: str
) -> dict[str, Any]:
    """The event of one finished execution: its id, its state as the server spelled it, its record counts."""
    return {
        "execution_id": execution_id,
        "state": status.state,
        "total": status.total,
        "completed": status.completed,
        "failed": status.failed or 0,
        "service_name": service_name,
        "service_version": service_version,
    }
