"""The rounds of a batch: round 0 the chunks, then the rounds of rescoring failed records.

Each round is a set of executions ("parts"). A chunk's records follow from the input's chunking; once every
execution of a round is complete, the records that failed in it (and only those) are sent again as the parts of
the next round, at most ``chunk_size`` records each. A part numbers its records 0, 1, ... as any execution does,
and the state keeps the record numbers (of the whole input) each rescore part carries, so results are matched to
records whatever the round; the results file has each record's latest outcome.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from airflow_mlserver.exceptions import MLServerBatchTimeoutError
from airflow_mlserver.operators.batch_state import BatchState, RescoreRound, Round, ranges
from airflow_mlserver.triggers.progress import chunk_label
from airflow_mlserver.triggers.waiting import deadline_passed

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus, RecordResult, WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook


def round_records(
    state: BatchState, round_: Round, statuses: Mapping[int, BatchStatus]
) -> dict[int, Sequence[int]]:
    """The record numbers each part of ``round_`` carries; a chunk's follow from the chunks' record counts.

    :param statuses: The status of every part of the round (complete: their counts are final).
    """
    if round_.number > 0:
        rescore = state.rescores[round_.number - 1]
        return {part: rescore.part_records(part) for part in range(round_.parts)}
    numbering: dict[int, Sequence[int]] = {}
    offset = 0
    for part in range(round_.parts):
        numbering[part] = range(offset, offset + statuses[part].total)
        offset += statuses[part].total
    return numbering


def failed_records(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    round_: Round,
    statuses: Mapping[int, BatchStatus],
) -> list[int]:
    """The record numbers that failed in the complete round ``round_``, ascending.

    Only the executions whose status counts failures (or does not say) have their results read.
    """
    numbering = round_records(state, round_, statuses)
    failed: list[int] = []
    for part, execution_id in sorted(round_.executions.items()):
        if statuses[part].failed == 0:
            continue
        results = hook.iter_batch_results(service.name, service.version, execution_id)
        failed.extend(n for n, result in zip(numbering[part], results, strict=True) if not result.success)
    return sorted(failed)


def plan_next_round(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    statuses: Mapping[int, BatchStatus],
    rounds: int,
    part_size: int | None,
) -> int:
    """After the current round completed, add the next rescore round to ``state`` when one is left and records
    failed; answer how many records it sends again (0: no round).

    :param statuses: The status of every part of the current round.
    :param rounds: How many rescore rounds the task has (``rescore_failed_records``).
    :param part_size: The most records per execution (``chunk_size``), None for all in one.
    """
    current = state.current_round()
    if current.number >= rounds:
        return 0
    failed = failed_records(hook, service, state, current, statuses)
    size = part_size or len(failed)
    if failed:
        state.rescores.append(
            RescoreRound([ranges(failed[i : i + size]) for i in range(0, len(failed), size)])
        )
    return len(failed)


def labels(round_: Round, mapped: bool) -> dict[int, str]:
    """Each part's name in the log: ``chunk 2 of 3`` (of a ``mapped`` task's records), or ``rescore round 1,
    part 1 of 2``."""
    if round_.number == 0:
        return {i: chunk_label(i, round_.parts, mapped) for i in range(round_.parts)}
    return {i: f"rescore round {round_.number}, part {i + 1} of {round_.parts}" for i in range(round_.parts)}


def round_frames(
    frames: Iterable[pd.DataFrame], state: BatchState, round_: Round, parts: Sequence[int]
) -> Iterator[tuple[int, pd.DataFrame]]:
    """The input records of each of ``parts`` (ascending) of ``round_``, from one pass over ``frames``.

    :param frames: The input records, chunk by chunk (the chunks of round 0), in input order.
    """
    if not parts:
        return
    if round_.number > 0:
        rescore = state.rescores[round_.number - 1]
        yield from part_frames(frames, {i: rescore.part_records(i) for i in parts}).items()
        return
    for index, frame in enumerate(frames):
        if index > parts[-1]:
            return  # read no further than the last chunk asked for
        if index in parts:
            yield index, frame


def wave_frames(
    frames: Iterable[pd.DataFrame],
    state: BatchState,
    round_: Round,
    starts: Sequence[int],
    stages: Sequence[int],
) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """The input records of the parts to start (``starts``) and of the chunks to stage (``stages``, round 0
    only), each with the record number of its first record (0 in a rescore round), from one pass over
    ``frames`` that reads no further than the last one asked for.

    :param frames: The input records, chunk by chunk (the chunks of round 0), in input order.
    """
    if round_.number > 0:
        yield from ((i, 0, f) for i, f in round_frames(frames, state, round_, starts))
        return
    wanted = sorted({*starts, *stages})
    offset = 0
    for index, frame in enumerate(frames):
        if not wanted or index > wanted[-1]:
            return
        if index in wanted:
            yield index, offset, frame
        offset += len(frame)


def part_frames(
    frames: Iterable[pd.DataFrame], parts: Mapping[int, Sequence[int]]
) -> dict[int, pd.DataFrame]:
    """The input rows of each part, in the order of its (ascending) record numbers, from one pass over the input.

    :param frames: The input records, chunk by chunk, in input order.
    :param parts: The record numbers of each part to read.
    """
    pieces: dict[int, list[pd.DataFrame]] = {part: [] for part in parts}
    offset = 0
    for frame in frames:
        end = offset + len(frame)
        for part, numbers in parts.items():
            low, high = bisect_left(numbers, offset), bisect_left(numbers, end)
            if high > low:
                pieces[part].append(frame.iloc[[n - offset for n in numbers[low:high]]])
        offset = end
    return {part: pd.concat(found, ignore_index=True) for part, found in pieces.items()}


def latest_outcomes(
    hook: MLServerHook, service: WebService, state: BatchState
) -> tuple[dict[int, RecordResult], dict[int, int]]:
    """The latest result of every record that was sent again, and how many times each was scored.

    A record is in a rescore round only when it failed in every round before, so round ``n``'s result is its
    latest when no later round has it, and it was scored ``n + 1`` times.
    """
    latest: dict[int, RecordResult] = {}
    attempts: dict[int, int] = {}
    for number, rescore in enumerate(state.rescores, start=1):
        for part, execution_id in sorted(rescore.executions.items()):
            results = hook.iter_batch_results(service.name, service.version, execution_id)
            for record, result in zip(rescore.part_records(part), results, strict=True):
                latest[record], attempts[record] = result, number + 1
    return latest, attempts


def check_deadline(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    round_: Round,
    statuses: Mapping[int, BatchStatus],
    timeout: float | None,
) -> None:
    """Past the deadline: cancel what still runs and fail, unless every part of the round has finished.

    :param timeout: The task's ``timeout`` in seconds, named in the error.
    """
    if not deadline_passed(state.deadline):
        return
    unfinished = [s for s in statuses.values() if not s.is_finished]
    for status in unfinished:
        hook.cancel_batch(service.name, service.version, status.execution_id)
    if unfinished or len(statuses) < round_.parts:
        done = sum(s.completed for s in statuses.values())
        raise MLServerBatchTimeoutError(
            f"The batch on web service '{service.name}' version '{service.version}' did not finish within its "
            f"timeout of {timeout or 0:g} s ({done} records done); canceled "
            f"{', '.join(s.execution_id for s in unfinished) or 'nothing (no execution was running)'}. "
            "Raise timeout, parallel_count or max_active_executions, or score fewer records per run."
        )
