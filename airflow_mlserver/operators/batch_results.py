"""The batch operator's results: read back chunk by chunk and written in input order, failures counted.

Memory stays bounded by a chunk: each chunk's input records are read again (the same chunks as at the start)
and joined with its execution's results, streamed from the server one record at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    """

    total: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = field(default_factory=list)

    def add(self, results: Sequence[RecordResult], chunk: pd.DataFrame, keep_rows: bool) -> None:
        """Count one chunk's results (its records numbered from :attr:`total`), keep its rows if asked."""
        for position, result in enumerate(results):
            if not result.success:
                self.failed += 1
                if len(self.failures) < MAX_FAILURES_SHOWN:
                    reason = (result.error_message or "failed").splitlines()[0]
                    self.failures.append(f"record {self.total + position}: {reason}")
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
) -> Scored:
    """Join each chunk's input records (``frames``) with its execution's results; write and count them.

    :param executions: The execution of each chunk, by chunk number.
    :param writer: Where the result rows go (committed here, aborted on any error), or None to write none.
    :param keep_extra_columns: Keep input columns the service does not declare in the results.
    :param keep_rows: Keep the result rows for ``return_results``.
    """
    declared = {i.name for i in service.inputs}
    scored = Scored()
    try:
        for index, frame in enumerate(frames):
            results = list(hook.iter_batch_results(service.name, service.version, executions[index]))
            inputs = frame if keep_extra_columns else frame[[c for c in frame.columns if c in declared]]
            chunk = results_frame(inputs, results, service, offset=scored.total)
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
