"""The batch operator's staged results: each chunk's result rows written as soon as its execution is complete.

While other chunks still run, a complete chunk's input records are joined with its execution's results
(streamed from the server one record at a time) and written as one Parquet part file in a staging folder next
to the output, ``.<output name>.parts/chunk-000003-<execution id>.parquet``, under a temporary name and then
renamed, so a part file is always whole. The chunk's number then goes into the task-state store's ``written``
list. Parts are named by execution as well as chunk, so a part left by an earlier, cleared run of the same
output is never taken for this run's.

The final pass (:func:`~airflow_mlserver.operators.batch.results.write_results`) reads the parts in chunk
order, puts each rescored record's latest outcome in place, and writes the output; then the folder is removed.
A part that is missing (a crash between the rename and the store, a folder removed by hand) is built again
from the server's results: nothing is ever scored twice, and every step is bounded by a chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.parquet as pq

from airflow_mlserver.tables import ResultsWriter, results_frame

if TYPE_CHECKING:
    from airflow_mlserver.client.models import WebService
    from airflow_mlserver.hooks.mlserver import MLServerHook
    from airflow_mlserver.operators.batch.state import BatchState, StateStore


class StagedParts:
    """The staging folder of one output: where each complete chunk's result rows wait for the final pass.

    :param output: The output's ``ObjectStoragePath``; the folder is its sibling ``.<name>.parts``. None for no
        output: nothing is staged, result rows are only built.
    :param service: The service, whose declared outputs fix the result columns.
    :param keep_extra_columns: Keep input columns the service does not declare (``extra_columns="keep"``).
    """

    def __init__(self, output: Any, service: WebService, keep_extra_columns: bool) -> None:
        self.folder = None if output is None else output.parent / f".{output.name}.parts"
        self.service = service
        self.keep_extra_columns = keep_extra_columns

    def path(self, chunk: int, execution_id: str) -> Any:
        """The part file of chunk ``chunk`` as execution ``execution_id`` scored it."""
        if self.folder is None:
            raise ValueError("no output, so no part files")
        return self.folder / f"chunk-{chunk:06d}-{execution_id}.parquet"

    def inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The input columns that go into the results."""
        if self.keep_extra_columns:
            return frame
        declared = {i.name for i in self.service.inputs}
        return frame[[c for c in frame.columns if c in declared]]

    def build(self, hook: MLServerHook, execution_id: str, offset: int, frame: pd.DataFrame) -> pd.DataFrame:
        """A chunk's result rows (no ``attempts``): its input records joined with its execution's results.

        :param offset: The record number of the chunk's first record in the whole input.
        """
        pages = hook.iter_batch_result_pages(self.service.name, self.service.version, execution_id)
        return results_frame(self.inputs(frame), pages, self.service, offset)

    def write(
        self, hook: MLServerHook, chunk: int, execution_id: str, offset: int, frame: pd.DataFrame
    ) -> int:
        """Write chunk ``chunk``'s part file (whole, or not at all: the output's own writer); answer its row
        count."""
        rows = self.build(hook, execution_id, offset, frame)
        writer = ResultsWriter(self.path(chunk, execution_id), "parquet", self.service)
        try:
            writer.write(rows)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return len(rows)

    def stage(
        self,
        hook: MLServerHook,
        state: BatchState,
        store: StateStore | None,
        chunk: int,
        frame: pd.DataFrame,
    ) -> int:
        """Write the part file of the complete chunk ``chunk`` (its input records ``frame``) and store it as
        ``written``; answer its row count."""
        part = state.chunks.parts[chunk]
        if part.execution_id is None:
            raise ValueError(f"chunk {chunk} has no execution to stage")
        rows = self.write(hook, chunk, part.execution_id, part.numbers()[0], frame)
        state.written = sorted({*state.written, chunk})
        state.save(store)  # a crash before this line writes the part again, from the same results
        return rows

    def read(self, chunk: int, execution_id: str) -> pd.DataFrame | None:
        """Chunk ``chunk``'s result rows from its part file, or None when there is none."""
        path = None if self.folder is None else self.path(chunk, execution_id)
        if path is None or not path.exists():
            return None
        with path.open("rb") as handle:
            frame: pd.DataFrame = pq.read_table(handle).to_pandas()
        return frame

    def remove(self, state: BatchState) -> None:
        """Remove this batch's part files (once the output is in place), and the folder once it is empty (another
        task may stage beside them)."""
        if self.folder is None or not self.folder.exists():
            return
        for chunk, execution_id in state.chunks.executions.items():
            path = self.path(chunk, execution_id)
            if path.exists():
                path.unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
