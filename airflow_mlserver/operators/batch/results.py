"""The batch operator's results: written in input order, each record's latest outcome, failures counted.

Memory stays bounded by a chunk (and the records rescored). Each chunk's result rows are its staged part file
(:mod:`~airflow_mlserver.operators.batch.parts`, written while later chunks still ran) or, without an output
or where a part is missing, its input records read again (the same chunks as at the start) joined with its
execution's results, streamed from the server one record at a time; a record that was rescored gets its latest
result in place (:func:`latest_outcomes`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.words import count, noun, plural
from airflow_mlserver.exceptions import MLServerBatchFailedError
from airflow_mlserver.operators.batch.state import BatchState
from airflow_mlserver.tables import ResultColumns, ResultsWriter, patch_results

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import RecordResult, WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.batch.parts import StagedParts

#: The failures a failed task names in its message.
MAX_FAILURES_SHOWN = 5
#: The most result rows ``return_results`` returns.
MAX_RETURNED_ROWS = 1000


@dataclass
class Scored:
    """What the results said: how many records, how many failed, the first failures and the rows kept.

    :param rows: The result rows (``return_results``), None when there were more than :data:`MAX_RETURNED_ROWS`.
    """

    total: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = field(default_factory=list)

    def add(self, chunk: pd.DataFrame, names: ResultColumns, keep_rows: bool) -> None:
        """Count one chunk's result rows (its records numbered from :attr:`total`), keep them if asked."""
        failed = chunk.index[~chunk[names.success].astype(bool)]
        self.failed += len(failed)
        for position in failed[: MAX_FAILURES_SHOWN - len(self.failures)]:
            reason = (chunk[names.error_message].iloc[position] or "failed").splitlines()[0]
            self.failures.append(f"record {self.total + position}: {reason}")
        self.total += len(chunk)
        if keep_rows and self.rows is not None:
            if self.total > MAX_RETURNED_ROWS:
                self.rows = None
            else:
                rows = chunk.astype(object).where(chunk.notna(), None).to_dict("records")
                self.rows.extend({str(k): v for k, v in row.items()} for row in rows)


class _Chunks:
    """The input's chunks, read on first need and only as far as asked (a missing part needs its records)."""

    def __init__(self, frames: Callable[[], Iterator[pd.DataFrame]]) -> None:
        self._open, self._next = frames, 0
        self._frames: Iterator[pd.DataFrame] | None = None

    def get(self, index: int) -> pd.DataFrame:
        if self._frames is None:
            self._frames = self._open()
        while True:
            frame = next(self._frames)
            self._next += 1
            if self._next > index:
                return frame


def write_results(
    hook: MLServerHook,
    service: WebService,
    state: BatchState,
    frames: Callable[[], Iterator[pd.DataFrame]],
    writer: ResultsWriter | None,
    parts: StagedParts,
    keep_rows: bool,
    rescored: Mapping[int, RecordResult],
    attempts: Mapping[int, int] | None,
) -> Scored:
    """Each chunk's result rows in input order with its records' latest outcomes: written and counted.

    :param frames: Opens the input records, chunk by chunk (read only for chunks without a staged part).
    :param writer: Where the result rows go (committed here, aborted on any error), or None to write none.
    :param parts: The staged parts (read when ``writer`` is given) and how result rows are built.
    :param keep_rows: Keep the result rows for ``return_results``.
    :param rescored: The latest result of each record that was sent again, by record number.
    :param attempts: How many times each record was scored, when more than once; None for no ``attempts`` column.
    """
    scored, inputs, patched = Scored(), _Chunks(frames), sorted(rescored)
    try:
        for index, chunk in enumerate(state.chunks.parts):
            execution_id, offset = chunk.execution_id or "", scored.total
            rows = parts.read(index, execution_id) if writer is not None else None
            if rows is None:
                rows = parts.build(hook, execution_id, offset, inputs.get(index))
            end = offset + len(rows)
            numbers = patched[bisect_left(patched, offset) : bisect_left(patched, end)]
            patch_results(rows, [n - offset for n in numbers], [rescored[n] for n in numbers], service)
            names = ResultColumns.find([str(c) for c in rows.columns], service)
            if attempts is not None:
                rows[names.attempts] = [attempts.get(n, 1) for n in range(offset, end)]
            if writer is not None:
                writer.write(rows)
            scored.add(rows, names, keep_rows)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return scored


def check_failures(scored: Scored, state: BatchState, max_failed: int, output_uri: str | None) -> None:
    """Fail the task when more than ``max_failed`` records failed (after the last round of rescoring)."""
    if scored.failed <= max_failed:
        return
    rounds = f", after {plural(state.rescore_rounds, 'round')} of rescoring" if state.rescore_rounds else ""
    first = "first " if scored.failed > len(scored.failures) else ""
    raise MLServerBatchFailedError(
        f"{count(scored.failed)} of {plural(scored.total, 'record')} failed{rounds} (max_failed_records="
        f"{max_failed}); {first}{noun(len(scored.failures), 'failure')}: "
        + "; ".join(scored.failures)
        + (f". Results are in {output_uri}." if output_uri else ".")
    )


def latest_outcomes(
    hook: MLServerHook, service: WebService, state: BatchState
) -> tuple[dict[int, RecordResult], dict[int, int]]:
    """The latest result of every record that was sent again, and how many times each was scored.

    A record is in a rescore round only when it failed in every round before, so round ``n``'s result is its
    latest when no later round has it, and it was scored ``n + 1`` times.
    """
    latest: dict[int, RecordResult] = {}
    attempts: dict[int, int] = {}
    for number, round_ in enumerate(state.rounds[1:], start=1):
        for part in round_.parts:
            if part.execution_id is None:
                continue
            results = hook.iter_batch_results(service.name, service.version, part.execution_id)
            for record, result in zip(part.numbers(), results, strict=True):
                latest[record], attempts[record] = result, number + 1
    return latest, attempts
