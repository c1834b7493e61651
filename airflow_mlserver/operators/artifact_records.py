"""Which executions the artifacts operator reads, and the record numbers it gives their records.

A batch task's records are numbered as its results file numbers them: the chunks' executions in order (chunk
order; for a mapped batch task, map index order first), each execution's records after those of the earlier
ones. So record ``r`` is record ``r - first_record`` of the chunk it falls in, where a chunk's ``first_record``
is the sum of the earlier chunks' ``totalItemCount``. A record that a rescore round scored again (the batch
operator's ``rescore_failed_records``) has, as in the results file, its latest attempt: record ``i`` of the
last rescore execution that carried it. Only the batch operator's summary (its return value) names those.
"""

from __future__ import annotations

import ast
import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.exceptions import OperatorArgumentError
from airflow_mlserver.operators.batch_state import numbers, ranges

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: How ``execution_ids`` may be given, for the messages that refuse one.
_FORMS = (
    "give the batch task's summary (score.output) or its execution_ids XCom (score.output['execution_ids']), a "
    "list per map index for a mapped task, or a list of execution ids"
)


@dataclass(frozen=True)
class Rescore:
    """An execution of a rescore round: the records it scored again.

    :param first_chunk: The first chunk execution of its batch task (map index), where its numbers start.
    :param records: Its records' numbers in that batch task: its record ``i`` is ``records[i]``.
    """

    execution_id: str
    round: int
    first_chunk: str
    records: tuple[int, ...]


@dataclass(frozen=True)
class Given:
    """The executions ``execution_ids`` names: the chunks' in record order, and the rescore rounds'."""

    chunks: list[str]
    rescores: list[Rescore] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Every execution: the chunks', then the rescores'."""
        return self.chunks + [r.execution_id for r in self.rescores]


def read_executions(value: Any, argument: str = "execution_ids") -> Given:
    """The executions ``value`` names, in order, flattened one level.

    ``value`` is a batch operator's summary (its ``execution_ids`` are the chunks; its ``executions`` of a round
    above 0, the rescores) or a list of them (a mapped task, one per map index); a list of ids, or a list of
    such lists (a mapped task's ``execution_ids`` XCom); or the text of such a list (what a Jinja template
    renders from one). Refused (:class:`~airflow_mlserver.exceptions.OperatorArgumentError`): anything else, no
    id at all, an id that is not one path segment, an id given twice (its records would be numbered twice).
    """
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text) if text[:1] in ("[", "(") else [text] if text else []
        except (ValueError, SyntaxError):
            raise OperatorArgumentError(argument, given, f"{_FORMS} (the text is not a list)") from None
    out = Given([])
    for item in [value] if isinstance(value, Mapping) else _items(value, argument, given):
        if isinstance(item, str):
            out.chunks.append(item)
        elif isinstance(item, Mapping):
            _read_summary(item, argument, given, out)
        else:
            out.chunks.extend(_items(item, argument, given))
    if not out.chunks:
        raise OperatorArgumentError(
            argument, given, f"{_FORMS}; this holds none (did the batch task run upstream?)"
        )
    seen: set[str] = set()
    for execution_id in out.ids:
        if not valid_segment(execution_id):
            raise OperatorArgumentError(
                argument,
                given,
                f"{_FORMS} ({quoted(execution_id)} is not an execution id: non-empty text "
                "without '/', '\\' or control characters)",
            )
        if execution_id in seen:
            raise OperatorArgumentError(
                argument,
                given,
                f"give each execution once ({quoted(execution_id)} is there twice, so its "
                "records would be numbered twice)",
            )
        seen.add(execution_id)
    return out


def _items(value: Any, argument: str, given: Any) -> list[Any]:
    """The items of a list, a tuple or a lazy XCom sequence."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise OperatorArgumentError(argument, given, _FORMS)
    return list(value)


def _read_summary(summary: Mapping[Any, Any], argument: str, given: Any, out: Given) -> None:
    """Add a batch operator's summary: its chunks, and the executions of its rescore rounds."""
    chunks = _items(summary.get("execution_ids"), argument, given)
    out.chunks.extend(chunks)
    for line in summary.get("executions") or []:
        try:
            if int(line["round"]) > 0:
                records = tuple(numbers(str(line["records"])))
                out.rescores.append(Rescore(line["execution_id"], int(line["round"]), chunks[0], records))
        except (KeyError, TypeError, ValueError, IndexError):
            raise OperatorArgumentError(
                argument, given, f"{_FORMS} (its executions line {quoted(line)} is not the batch operator's)"
            ) from None


def execution_ids_check(name: str, value: Any) -> Any:
    """``execution_ids``: readable by :func:`read_executions` (kept as given: a lazy XCom stays lazy)."""
    read_executions(value, name)
    return value


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
