"""Which executions the artifacts operator reads, and the record numbers it gives their records.

A batch task's records are numbered as its results file numbers them: the executions in order (chunk order;
for a mapped batch task, map index order first), each execution's records after those of the earlier ones.
So record ``r`` is record ``r - first_record`` of the execution it falls in, where an execution's
``first_record`` is the sum of the earlier executions' ``totalItemCount``.
"""

from __future__ import annotations

import ast
import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.exceptions import OperatorArgumentError

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: How ``execution_ids`` may be given, for the messages that refuse one.
_FORMS = (
    "give a list of execution ids, or the batch task's execution_ids XCom (score.output['execution_ids'], a list "
    "per map index for a mapped task)"
)


def read_execution_ids(value: Any, argument: str = "execution_ids") -> list[str]:
    """The execution ids in ``value``, in order, flattened one level.

    ``value`` is a list of ids; a list of such lists (a mapped batch task's ``execution_ids`` XCom, one list
    per map index); a batch operator's summary, or a list of them (its ``execution_ids`` key); or the text of
    such a list (what a Jinja template renders from one). Refused
    (:class:`~airflow_mlserver.exceptions.OperatorArgumentError`): anything else, no id at all, an id that is
    not one path segment, and an id given twice (its records would be numbered twice).
    """
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text) if text[:1] in ("[", "(") else [text] if text else []
        except (ValueError, SyntaxError):
            raise OperatorArgumentError(argument, given, f"{_FORMS} (the text is not a list)") from None
    ids: list[Any] = []
    for item in _items(value, argument, given):
        ids.extend([item] if isinstance(item, str) else _items(item, argument, given))
    if not ids:
        raise OperatorArgumentError(
            argument, given, f"{_FORMS}; this holds none (did the batch task run upstream?)"
        )
    seen: set[str] = set()
    for execution_id in ids:
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
    return ids


def _items(value: Any, argument: str, given: Any) -> list[Any]:
    """The items of a list, a tuple or a lazy XCom sequence; a batch summary's ``execution_ids``."""
    if isinstance(value, Mapping):
        value = value.get("execution_ids")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise OperatorArgumentError(argument, given, _FORMS)
    return list(value)


def execution_ids_check(name: str, value: Any) -> Any:
    """``execution_ids``: readable by :func:`read_execution_ids` (kept as given: a lazy XCom stays lazy)."""
    read_execution_ids(value, name)
    return value


@dataclass(frozen=True)
class ExecutionSpan:
    """One execution and where its records fall among the task's: records ``first_record`` on.

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
            "first_record": self.first_record,
            "records": self.records,
            "state": self.status.state,
            "finished": self.status.is_finished,
        }


@dataclass(frozen=True)
class Executions:
    """The executions of one copy, in record order, and the record numbers across them."""

    spans: tuple[ExecutionSpan, ...]

    @classmethod
    def number(cls, ids: Sequence[str], statuses: Sequence[BatchStatus]) -> Executions:
        """The executions ``ids`` (with their ``statuses``), numbered from record 0 in that order."""
        spans, first = [], 0
        for execution_id, status in zip(ids, statuses, strict=True):
            spans.append(ExecutionSpan(execution_id, status, first))
            first += status.total
        return cls(tuple(spans))

    @property
    def ids(self) -> list[str]:
        return [s.execution_id for s in self.spans]

    @property
    def total(self) -> int:
        """Records in all the executions."""
        return sum(s.records for s in self.spans)

    @property
    def finished(self) -> bool:
        return all(s.status.is_finished for s in self.spans)

    @property
    def state(self) -> str:
        """The executions' state: ``Complete``, or for executions in different states ``Complete (3), Running (1)``."""
        counts: dict[str, int] = {}
        for span in self.spans:
            counts[span.status.state] = counts.get(span.status.state, 0) + 1
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{state} ({n})" for state, n in counts.items())

    @cached_property
    def _firsts(self) -> list[int]:
        return [s.first_record for s in self.spans]

    def locate(self, record: int) -> tuple[ExecutionSpan, int]:
        """The execution record ``record`` (a task-wide number, in range) falls in, and its index there."""
        span = self.spans[bisect.bisect_right(self._firsts, record) - 1]
        return span, record - span.first_record
