"""The batch operator's results: written in input order, each record's latest outcome, failures counted.

Memory stays bounded by a chunk (and the records rescored). Each chunk's result rows are its staged part file
(:mod:`~airflow_mlserver.operators.batch_parts`, written while later chunks still ran) or, without an output
or where a part is missing, its input records read again (the same chunks as at the start) joined with its
execution's results, streamed from the server one record at a time; a record that was rescored gets its latest
result in place.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.exceptions import MLServerBatchFailedError
from airflow_mlserver.operators.batch_state import BatchState, ranges
from airflow_mlserver.tables import ResultColumns, ResultsWriter, patch_results
from airflow_mlserver.triggers.progress import counted

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import RecordResult, WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.batch_parts import StagedParts

#: The failures a failed task names in its message.
MAX_FAILURES_SHOWN = 5
#: The most result rows ``return_results`` returns.
MAX_RETURNED_ROWS = 1000


@dataclass
class Scored:
    """What the results said: how many records, how many failed, the first failures and the rows kept.

    :param rows: The result rows (``return_results``), None when there were more than :data:`MAX_RETURNED_ROWS`.
    :param chunks: The record numbers of each chunk, in chunk order.
    """

    total: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = field(default_factory=list)
    chunks: list[range] = field(default_factory=list)

    def add(self, chunk: pd.DataFrame, names: ResultColumns, keep_rows: bool) -> None:
        """Count one chunk's result rows (its records numbered from :attr:`total`), keep them if asked."""
        failed = chunk.index[~chunk[names.success].astype(bool)]
        self.failed += len(failed)
        for position in failed[: MAX_FAILURES_SHOWN - len(self.failures)]:
            reason = (chunk[names.error_message].iloc[position] or "failed").splitlines()[0]
            self.failures.append(f"record {self.total + position}: {reason}")
        self.chunks.append(range(self.total, self.total + len(chunk)))
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
        for index in range(state.chunks):
            execution_id, offset = state.executions[index], scored.total
            rows = parts.read(index, execution_id) if writer is not None else None
            if rows is None:
                rows = parts.build(hook, execution_id, offset, inputs.get(index))
            end = offset + len(rows)
            numbers = patched[bisect_left(patched, offset) : bisect_left(patched, end)]
            patch_results(rows, [n - offset for n in numbers], [rescored[n] for n in numbers], service)
            names = ResultColumns.after(
                [str(c) for c in rows.columns[1 : -len(service.outputs) - 2]], service
            )
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
    rounds = f", after {counted(len(state.rescores), 'round')} of rescoring" if state.rescores else ""
    raise MLServerBatchFailedError(
        f"{scored.failed} of {scored.total} records failed{rounds} (max_failed_records={max_failed}); first "
        "failures: " + "; ".join(scored.failures) + (f". Results are in {output_uri}." if output_uri else ".")
    )


def executions_summary(state: BatchState, chunks: Sequence[range]) -> list[dict[str, Any]]:
    """Every execution of the batch, in order, with the record numbers it carries (its record ``i`` is the
    ``i``-th of them), as ranges: ``{"execution_id": ..., "round": 0, "records": "0-49999"}``.

    :param chunks: The record numbers of each chunk (:attr:`Scored.chunks`).
    """
    rows = [
        {"execution_id": state.executions[i], "round": 0, "records": ranges(chunk)}
        for i, chunk in enumerate(chunks)
    ]
    for number, rescore in enumerate(state.rescores, start=1):
        rows.extend(
            {"execution_id": execution_id, "round": number, "records": rescore.records[part]}
            for part, execution_id in sorted(rescore.executions.items())
        )
    return rows


def batch_summary(
    service: WebService,
    state: BatchState,
    scored: Scored,
    rescored: Mapping[int, RecordResult],
    output_uri: str | None,
) -> dict[str, Any]:
    """The task's return value (XCom): the service, the executions, the counts, the output, the duration.

    ``execution_ids`` are the chunks' in chunk order; ``executions`` lists every execution, rescores included,
    with the record numbers it carries (see :func:`executions_summary`).
    """
    return {
        "service_name": service.name,
        "service_version": service.version,
        "execution_ids": state.execution_ids(),
        "executions": executions_summary(state, scored.chunks),
        "total": scored.total,
        "succeeded": scored.total - scored.failed,
        "failed": scored.failed,
        "rescore_rounds": len(state.rescores),
        "rescored_records": len(rescored),
        "output_uri": output_uri,
        "duration_seconds": round(time.time() - state.started, 3),
    }
