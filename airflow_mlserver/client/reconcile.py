"""Which execution a batch start created when its answer was lost: one rule, for the client's own retry of a
start and for the batch operator's retry after a worker died between storing its intent and storing the id.

A start sends an ``Idempotency-Key`` (a new random key per start, the same key when that start is sent again).
A server that honours keys (the local server says so in every answer's ``X-Idempotency-Keys: honoured``
header) answers a start sent again with that key with the execution the first send created, if it created one:
that is the proof, and nothing else is looked at.

A server that ignores keys (a real Machine Learning Server) is asked which executions are new since just before
the start (and not already the caller's) and carry as many records and have not ended: the candidates. A
candidate is adopted only when it is shown to be this start's own: its results for a sample of the records
(:func:`sample_indexes`) equal what the service answers for the same records, request-response, run twice to
show that the service answers the same records the same way (:func:`judge`). So:

- no candidate: nothing was started, and the start is sent again;
- one candidate whose sample matches, the others' not: it is adopted;
- no candidate matches, and the service answers the same way twice: none is this start's; it is sent again;
- otherwise (several match, the service is not deterministic, a candidate has not finished in time):
  :class:`~airflow_mlserver.client.errors.AmbiguousStartError` names the candidates and what to check, and
  nothing is adopted or started.

The limit of the sample rule: a batch someone else started at the same moment, of as many records, whose
sampled records get exactly the same outputs as this start's, cannot be told from it (that needs the same
records, or a service whose outputs do not depend on them). The key rule has no such limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: How many records of a candidate are compared.
SAMPLE_SIZE = 3

#: One record's outcome as compared: success, and its outputs (None where it failed).
Outcome = tuple[bool, Any]


@dataclass(frozen=True)
class Candidate:
    """A new execution of the start's size: its outcomes for the sampled records, None if it had not finished
    by the time it was looked at."""

    execution_id: str
    sample: tuple[Outcome, ...] | None


@dataclass(frozen=True)
class Adopt:
    """This execution is the start's own."""

    execution_id: str


@dataclass(frozen=True)
class NoneStarted:
    """The start created no execution: send it again."""


@dataclass(frozen=True)
class Ambiguous:
    """Cannot tell: these candidates, and why (a sentence for the error)."""

    candidates: tuple[str, ...]
    why: str


Verdict = Adopt | NoneStarted | Ambiguous


def sample_indexes(count: int, size: int = SAMPLE_SIZE) -> list[int]:
    """Which records of a start of ``count`` records are compared: spread from the first to the last."""
    if count <= size:
        return list(range(count))
    return sorted({round(i * (count - 1) / (size - 1)) for i in range(size)})


def outcome(success: bool, outputs: Any) -> Outcome:
    """A record's outcome as compared (a failed record's outputs do not count)."""
    return (bool(success), outputs if success else None)


def judge(candidates: Sequence[Candidate], expected: Sequence[Outcome], again: Sequence[Outcome]) -> Verdict:
    """The verdict on the candidates of a start whose answer was lost.

    :param candidates: The new executions of the start's size that have not ended.
    :param expected: The service's outcomes for the sampled records, request-response.
    :param again: The same, a second time (the service answers the same records the same way when equal).
    """
    if not candidates:
        return NoneStarted()
    ids = tuple(c.execution_id for c in candidates)
    if tuple(expected) != tuple(again):
        return Ambiguous(ids, "the service does not answer the same records the same way twice, so its results "
                         "cannot show which execution is this start's")  # fmt: skip
    unfinished = tuple(c.execution_id for c in candidates if c.sample is None)
    if unfinished:
        return Ambiguous(ids, f"{_listed(unfinished)} had not finished, so its results could not be compared; "
                         "retry once it has")  # fmt: skip
    matches = tuple(c.execution_id for c in candidates if c.sample == tuple(expected))
    if len(matches) == 1:
        return Adopt(matches[0])
    if not matches:
        return NoneStarted()
    return Ambiguous(matches, "their results for the sampled records are the same as this start's")


def _listed(ids: Sequence[str]) -> str:
    return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + f" and {ids[-1]}"
