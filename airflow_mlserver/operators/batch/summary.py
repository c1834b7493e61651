"""The batch operator's return value (its XCom) as a class, and the one reader of every form a DAG passes on.

A DAG hands a batch task's executions to the artifacts operator (or to its own tasks) in several forms: the
summary itself (``score.output``), a mapped task's list of summaries, the ``execution_ids`` XCom (a list, or a
list per map index), a list of ids, or the text a Jinja template renders from any of those.
:func:`read_executions` reads them all; :class:`BatchSummary` is the summary's one shape, written with
:meth:`BatchSummary.to_xcom` and read with :meth:`BatchSummary.read_executions` for its executions.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.exceptions import OperatorArgumentError
from airflow_mlserver.operators.batch.state import BatchState, numbers


@dataclass(frozen=True)
class SummaryExecution:
    """One execution of the batch: its round (0 the chunks) and the record numbers it carries (ranges; its
    record ``i`` is the ``i``-th of them)."""

    execution_id: str
    round: int
    records: str

    def to_xcom(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "round": self.round, "records": self.records}


class SummaryFormError(ValueError):
    """An ``executions`` line that is not the batch operator's."""

    def __init__(self, line: Any) -> None:
        super().__init__(f"not an executions line of the batch operator: {quoted(line)}")
        self.line = line


@dataclass(frozen=True)
class BatchSummary:
    """What a batch task returns: the service, the executions, the counts, the output and the duration.

    :param execution_ids: The chunks' executions, in chunk order.
    :param executions: Every execution, rescores included, with the records it carries.
    """

    service_name: str
    service_version: str
    execution_ids: list[str]
    executions: list[SummaryExecution]
    total: int
    succeeded: int
    failed: int
    rescore_rounds: int
    rescored_records: int
    output_uri: str | None
    duration_seconds: float

    @classmethod
    def of(
        cls,
        state: BatchState,
        total: int,
        failed: int,
        rescored: int,
        output_uri: str | None,
        now: float,
    ) -> BatchSummary:
        """The summary of a finished batch, from its state and what the results said."""
        return cls(
            service_name=state.service,
            service_version=state.version,
            execution_ids=state.chunk_execution_ids(),
            executions=[
                SummaryExecution(part.execution_id, number, part.records)
                for number, round_ in enumerate(state.rounds)
                for part in round_.parts
                if part.execution_id is not None
            ],
            total=total,
            succeeded=total - failed,
            failed=failed,
            rescore_rounds=state.rescore_rounds,
            rescored_records=rescored,
            output_uri=output_uri,
            duration_seconds=round(now - state.started, 3),
        )

    def to_xcom(self) -> dict[str, Any]:
        """The task's return value: plain JSON values (the operator adds ``results`` when it keeps rows)."""
        return {
            "service_name": self.service_name,
            "service_version": self.service_version,
            "execution_ids": list(self.execution_ids),
            "executions": [e.to_xcom() for e in self.executions],
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rescore_rounds": self.rescore_rounds,
            "rescored_records": self.rescored_records,
            "output_uri": self.output_uri,
            "duration_seconds": self.duration_seconds,
        }

    @staticmethod
    def read_executions(lines: Sequence[Any]) -> list[SummaryExecution]:
        """A summary's ``executions``; :class:`SummaryFormError` names a line that is not one."""
        out = []
        for line in lines:
            try:
                execution = SummaryExecution(
                    str(line["execution_id"]), int(line["round"]), str(line["records"])
                )
                numbers(execution.records)  # ranges of record numbers, or not the batch operator's
            except (KeyError, TypeError, ValueError):
                raise SummaryFormError(line) from None
            out.append(execution)
        return out


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


def _read_summary(value: Mapping[Any, Any], argument: str, given: Any, out: Given) -> None:
    """Add a batch operator's summary: its chunks, and the executions of its rescore rounds."""
    chunks = _items(value.get("execution_ids"), argument, given)
    out.chunks.extend(chunks)
    try:
        executions = BatchSummary.read_executions(value.get("executions") or [])
    except SummaryFormError as exc:
        raise OperatorArgumentError(
            argument, given, f"{_FORMS} (its executions line {quoted(exc.line)} is not the batch operator's)"
        ) from None
    for line in executions:
        if line.round > 0 and chunks:
            out.rescores.append(
                Rescore(line.execution_id, line.round, chunks[0], tuple(numbers(line.records)))
            )


def execution_ids_check(name: str, value: Any) -> Any:
    """``execution_ids``: readable by :func:`read_executions` (kept as given: a lazy XCom stays lazy)."""
    read_executions(value, name)
    return value
