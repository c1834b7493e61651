"""Which executions the artifacts operator reads, and the record numbers it gives their records.

A batch task's records are numbered as its results file numbers them: the chunks' executions in order (chunk
order; for a mapped batch task, map index order first), each execution's records after those of the earlier
ones. So record ``r`` is record ``r - first_record`` of the chunk it falls in, where a chunk's ``first_record``
is the sum of the earlier chunks' ``totalItemCount``. A record that a rescore round scored again (the batch
operator's ``rescore_failed_records``) has, as in the results file, its latest attempt: record ``i`` of the
last rescore execution that carried it. Only the batch operator's summary (its return value) names those.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlserver.operators.batch.state import ranges
from airflow_mlserver.operators.batch.summary import Given, Rescore, execution_ids_check, read_executions

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

__all__ = ["ExecutionSpan", "Executions", "Given", "Rescore", "execution_ids_check", "read_executions"]


@dataclass(frozen=True)
class ExecutionSpan:
    """A chunk's execution and where its records fall among the task's: records ``first_record`` on.

    :param status: The execution's status when the copy started (its ``total`` is ``totalItemCount``).
    """

    execution_id: str
    status: BatchStatus
    first_record: int

    @property
    def records(self) -> int:
        return self.status.total

    def to_json(self) -> dict[str, Any]:
        """The execution's line in the manifest."""
        return {
            "execution_id": self.execution_id,
            "round": 0,
            "first_record": self.first_record,
            "records": self.records,
            "state": self.status.state,
            "finished": self.status.is_finished,
        }


@dataclass(frozen=True)
class Executions:
    """The executions of one copy and the record numbers across them.

    :param spans: The chunks, in record order.
    :param rescores: The rescore rounds' executions, with their status, in round order.
    """

    spans: tuple[ExecutionSpan, ...]
    rescores: tuple[tuple[Rescore, BatchStatus], ...] = ()

    @classmethod
    def number(cls, given: Given, statuses: Mapping[str, BatchStatus]) -> Executions:
        """The executions ``given`` (with their ``statuses``), the chunks numbered from record 0 in order."""
        spans, first = [], 0
        for execution_id in given.chunks:
            spans.append(ExecutionSpan(execution_id, statuses[execution_id], first))
            first += statuses[execution_id].total
        rescores = sorted(given.rescores, key=lambda r: r.round)
        return cls(tuple(spans), tuple((r, statuses[r.execution_id]) for r in rescores))

    @property
    def ids(self) -> list[str]:
        """The chunks' execution ids."""
        return [s.execution_id for s in self.spans]

    @property
    def total(self) -> int:
        """Records in all the chunks."""
        return sum(s.records for s in self.spans)

    @property
    def statuses(self) -> list[BatchStatus]:
        return [s.status for s in self.spans] + [status for _, status in self.rescores]

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.statuses)

    @property
    def state(self) -> str:
        """The executions' state: ``Complete``, or for executions in different states ``Complete (3), Running (1)``."""
        counts: dict[str, int] = {}
        for status in self.statuses:
            counts[status.state] = counts.get(status.state, 0) + 1
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{state} ({n})" for state, n in counts.items())

    @cached_property
    def _firsts(self) -> list[int]:
        return [s.first_record for s in self.spans]

    @cached_property
    def _latest(self) -> dict[int, tuple[str, int]]:
        """Execution and index of each rescored record's latest attempt, by record number."""
        first_of = {s.execution_id: s.first_record for s in self.spans}
        latest = {}
        for rescore, _ in self.rescores:  # in round order: a later round wins
            offset = first_of[rescore.first_chunk]
            for index, record in enumerate(rescore.records):
                latest[offset + record] = (rescore.execution_id, index)
        return latest

    @property
    def rescored(self) -> int:
        """How many records a rescore round scored again."""
        return len(self._latest)

    def locate(self, record: int) -> tuple[str, int]:
        """The execution whose outcome record ``record`` (a task-wide number, in range) has, and its index there."""
        if record in self._latest:
            return self._latest[record]
        span = self.spans[bisect.bisect_right(self._firsts, record) - 1]
        return span.execution_id, record - span.first_record

    def to_json(self) -> list[dict[str, Any]]:
        """The manifest's executions: the chunks, then each rescore execution with the records it carried."""
        first_of = {s.execution_id: s.first_record for s in self.spans}
        return [span.to_json() for span in self.spans] + [
            {
                "execution_id": rescore.execution_id,
                "round": rescore.round,
                "records": len(rescore.records),
                "record_numbers": ranges([first_of[rescore.first_chunk] + r for r in rescore.records]),
                "state": status.state,
                "finished": status.is_finished,
            }
            for rescore, status in self.rescores
        ]
