"""The batch operator's results: read back chunk by chunk and written in input order, failures counted.

Memory stays bounded by a chunk (and the records rescored): each chunk's input records are read again (the
same chunks as at the start) and joined with its execution's results, streamed from the server one record at a
time; a record that was rescored gets its latest result instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlserver.operators.batch_state import BatchState, ranges
from airflow_mlserver.tables import ResultsWriter, results_frame

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlserver.client.models import RecordResult, WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook

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

    def add(self, results: Sequence[RecordResult], chunk: pd.DataFrame, keep_rows: bool) -> None:
        """Count one chunk's results (its records numbered from :attr:`total`), keep its rows if asked."""
        for position, result in enumerate(results):
            if not result.success:
                self.failed += 1
                if len(self.failures) < MAX_FAILURES_SHOWN:
                    reason = (result.error_message or "failed").splitlines()[0]
                    self.failures.append(f"record {self.total + position}: {reason}")
        self.chunks.append(range(self.total, self.total + len(chunk)))
        self.total += len(chunk)
        if keep_rows and self.rows is not None:
            if self.total > MAX_RETURNED_ROWS:
                self.rows = None
            else:
                rows = chunk.astype(object).where(chunk.notna(), None).to_dict("records")
                self.rows.extend({str(k): v for k, v in row.items()} for row in rows)


def write_results(
    hook: MLServerHook,
    service: WebService,
    executions: dict[int, str],
    frames: Iterable[pd.DataFrame],
    writer: ResultsWriter | None,
    keep_extra_columns: bool,
    keep_rows: bool,
    rescored: Mapping[int, RecordResult],
    attempts: Mapping[int, int] | None,
) -> Scored:
    """Join each chunk's input records (``frames``) with its records' latest results; write and count them.

    :param executions: The execution of each chunk, by chunk number.
    :param writer: Where the result rows go (committed here, aborted on any error), or None to write none.
    :param keep_extra_columns: Keep input columns the service does not declare in the results.
    :param keep_rows: Keep the result rows for ``return_results``.
    :param rescored: The latest result of each record that was sent again, by record number.
    :param attempts: How many times each record was scored, when more than once; None for no ``attempts`` column.
    """
    declared = {i.name for i in service.inputs}
    scored = Scored()
    try:
        for index, frame in enumerate(frames):
            offset = scored.total
            results = [
                rescored.get(offset + position, result)
                for position, result in enumerate(
                    hook.iter_batch_results(service.name, service.version, executions[index])
                )
            ]
            inputs = frame if keep_extra_columns else frame[[c for c in frame.columns if c in declared]]
            counts = (
                None if attempts is None else [attempts.get(n, 1) for n in range(offset, offset + len(frame))]
            )
            chunk = results_frame(inputs, results, service, offset, counts)
            if writer is not None:
                writer.write(chunk)
            scored.add(results, chunk, keep_rows)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return scored


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
