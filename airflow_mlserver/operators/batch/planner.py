"""What the batch operator does next, decided with no I/O.

:func:`plan` takes the stored state, the statuses of the current round's executions just read, the task's
configuration and the time, and answers a list of actions; :mod:`~airflow_mlserver.operators.batch.driver`
carries them out with the hook and asks again. Nothing here reads the clock, the network or Airflow, so every
case is a table test (``tests/test_batch_planner.py``).

The rules, in the order they apply to the current round (the last one of the state):

1. An execution of this round that failed or was canceled (an earlier try's, found on reattaching) is forgotten
   (:class:`Restart`) and its part is started again.
2. Past the deadline, unless every part of the round has finished: cancel what still runs and fail
   (:class:`Timeout`).
3. Parts not started are started in order, while fewer than ``max_active`` run (:class:`Start`); with an output,
   each complete chunk not staged yet is staged (:class:`Stage`, round 0 only: a rescore round's few results
   are read by the final pass).
4. Then: look again at once if something was staged while others run (:class:`Look`: staging takes time); wait
   until the first running execution finishes (:class:`Wait`); or, the round being complete, read which records
   failed (:class:`ReadFailures`) and plan the next round with them (:class:`AddRound`, at most ``part_size``
   records a part), or :class:`Finish` when no round is left or nothing failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_mlserver.client.models import BatchStatus
from airflow_mlserver.executions.waiting import FIRST, Until, deadline_passed, ended
from airflow_mlserver.operators.batch.state import BatchState, ranges


@dataclass(frozen=True)
class Config:
    """What the task's arguments say about the plan.

    :param max_active: Executions running at once (``max_active_executions``).
    :param rescore_rounds: Rounds of rescoring failed records (``rescore_failed_records``).
    :param part_size: Most records in one execution (``chunk_size``), None for all in one.
    :param stage: Whether complete chunks are staged (the task writes an output).
    """

    max_active: int = 1
    rescore_rounds: int = 0
    part_size: int | None = None
    stage: bool = False


@dataclass(frozen=True)
class Restart:
    """Forget the ended execution of part ``part`` of the current round: the part is started again."""

    part: int
    execution_id: str
    state: str


@dataclass(frozen=True)
class Start:
    """Start the execution of part ``part`` of round ``round``."""

    round: int
    part: int


@dataclass(frozen=True)
class Stage:
    """Stage the result rows of the complete chunk ``part`` next to the output."""

    part: int


@dataclass(frozen=True)
class Look:
    """Read the statuses again and plan anew (something was staged while others ran)."""


@dataclass(frozen=True)
class Wait:
    """Wait on the executions of these parts of the current round, ``until`` the first has finished."""

    parts: tuple[int, ...]
    until: Until = FIRST


@dataclass(frozen=True)
class ReadFailures:
    """Read which records failed in the complete round ``round``, then plan again with them."""

    round: int


@dataclass(frozen=True)
class AddRound:
    """Add a rescore round whose parts carry these record numbers (ranges, as stored)."""

    parts: tuple[str, ...]
    records: int


@dataclass(frozen=True)
class Finish:
    """Every round is complete: write the results."""


@dataclass(frozen=True)
class Timeout:
    """The deadline passed: cancel ``cancel`` (the unfinished executions) and fail.

    :param done: Records done in the round's executions.
    """

    cancel: tuple[str, ...]
    done: int


Action = Restart | Start | Stage | Look | Wait | ReadFailures | AddRound | Finish | Timeout


def plan(
    state: BatchState,
    statuses: Mapping[int, BatchStatus],
    config: Config,
    now: float,
    failed: Sequence[int] | None = None,
) -> list[Action]:
    """The next actions for the current round of ``state``; the last one is the one that ends this step
    (:class:`Look`, :class:`Wait`, :class:`ReadFailures`, :class:`AddRound`, :class:`Finish` or
    :class:`Timeout`).

    :param statuses: The status of every started part of the current round, by part, just read.
    :param now: The time (Unix timestamp), for the deadline.
    :param failed: The records that failed in the current round, once read (after :class:`ReadFailures`).
    """
    number, round_ = len(state.rounds) - 1, state.rounds[-1]
    actions: list[Action] = []
    live: dict[int, BatchStatus] = {}
    for part, status in sorted(statuses.items()):
        if ended(status):
            actions.append(Restart(part, status.execution_id, status.state))
        else:
            live[part] = status
    if deadline_passed(state.deadline, now):
        unfinished = tuple(s.execution_id for s in live.values() if not s.is_finished)
        if unfinished or len(live) < len(round_.parts):
            return [*actions, Timeout(unfinished, sum(s.completed for s in live.values()))]
    running = [p for p, s in live.items() if not s.is_complete]
    missing = [p for p in range(len(round_.parts)) if p not in live]
    starts = missing[: max(0, config.max_active - len(running))]
    stages = []
    if config.stage and number == 0:
        stages = [p for p, s in live.items() if s.is_complete and p not in state.written]
    actions += [Start(number, p) for p in starts] + [Stage(p) for p in stages]
    running += starts
    if stages and running:
        return [*actions, Look()]
    if running:
        return [*actions, Wait(tuple(sorted(running)))]
    return [*actions, _after_round(number, live, config, failed)]


def _after_round(
    number: int, statuses: Mapping[int, BatchStatus], config: Config, failed: Sequence[int] | None
) -> Action:
    """Every part of round ``number`` is complete: a next round for the records that failed, or the end."""
    if number >= config.rescore_rounds or all(s.failed == 0 for s in statuses.values()):
        return Finish()
    if failed is None:
        return ReadFailures(number)
    if not failed:
        return Finish()
    ordered = sorted(failed)
    size = config.part_size or len(ordered)
    return AddRound(tuple(ranges(ordered[i : i + size]) for i in range(0, len(ordered), size)), len(ordered))
