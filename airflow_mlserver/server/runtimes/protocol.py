"""The worker protocol, the same for every runtime: what the server sends a worker and what it answers.

One execution is a :class:`Job` answered by an :class:`Outcome`. A batch arrives in groups (:class:`Group`): the
service part is sent once per group, and the group's results go back in one message (:class:`GroupDone`, each
record's answer already JSON). Two numbers shared with the server (:class:`Flags`) keep the per-record promises
without a message per record: the worker writes which record of the group it is running (the server times each
record by it, and knows which one to fail when the worker hangs or dies), and reads a stop flag before each
record (a cancel or a shutdown ends the group there).

A runtime's loaded-service class (:class:`LoadedService`) binds the inputs with :func:`bind_inputs` and its own
binding of one value. Every runtime module imports this one, none imports another runtime's. It imports only
the standard library at import time, so that workers start fast.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one execution of a service (built by ``jobs.build_job``).

    :param key: The service revision; a worker keeps a loaded service under it.
    :param code: The service's ``code``.
    :param init_code: Its ``initCode``, run once per worker before the first execution.
    :param objects_dir: Where its model objects are (files named after their variable, in its runtime's format).
    :param scratch_dir: The working folder of ``initCode``.
    :param inputs: The input values (JSON), by input name.
    :param input_types: Each declared input's name and type, in declared order.
    :param output_names: The declared outputs, read back from the code's variables.
    :param output_files: Files the code may write that are returned (``outputFileNames``).
    :param workdir: The execution's own folder, made only when it keeps a declared output file.
    :param runtime_type: The service's ``runtimeType``, a name of the registry of runtimes (``runtimes.get``).
    """

    key: str
    code: str
    init_code: str | None
    objects_dir: str
    scratch_dir: str
    inputs: dict[str, Any]
    input_types: list[tuple[str, str]]
    output_names: list[str]
    output_files: list[str]
    workdir: str
    runtime_type: str


class GroupRecord(NamedTuple):
    """One record of a group: its index in the batch and its inputs as stored (JSON text)."""

    record_index: int
    inputs: str


@dataclass(frozen=True)
class Group:
    """Records of one batch execution for one worker.

    :param job: The service part, sent once per group (its ``inputs`` and ``workdir`` unused).
    :param records: The records, run in this order.
    :param folder: The execution's folder: a record's artifacts go to ``<folder>/<index>``.
    """

    job: Job
    records: list[GroupRecord]
    folder: str


class RecordDone(NamedTuple):
    """One record of a group has run: whether it succeeded, and its result as the JSON text of its answer."""

    record_index: int
    success: bool
    result: str


class GroupDone(NamedTuple):
    """A worker's answer to a group: the records it ran, in order (fewer when stopped; none on ``init_error``).

    ``seconds`` is the time the records took, without loading the service (it sizes the next groups).
    """

    done: list[RecordDone]
    init_error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Flags:
    """What a worker shares with the server during a group (``multiprocessing`` RawValues, no message needed).

    :ivar stop: Set by the server: the worker runs no further record of the group.
    :ivar position: Set by the worker: which record of the group (0-based) it is running; -1 while it loads the
        service, the group's length once done.
    """

    stop: Any
    position: Any


@dataclass(frozen=True)
class Outcome:
    """What came of one execution; ``init_failed`` when the service could not even be loaded."""

    success: bool
    error_message: str
    console_output: str = ""
    changed_files: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    init_failed: bool = False


def answer(outcome: Outcome, files: dict[str, str]) -> dict[str, Any]:
    """An outcome in the consume-answer shape of the contract (also each batch record's result)."""
    return {
        "success": outcome.success,
        "errorMessage": outcome.error_message,
        "consoleOutput": outcome.console_output,
        "changedFiles": outcome.changed_files,
        "outputParameters": outcome.outputs,
        "outputFiles": files,
    }


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def answer_text(outcome: Outcome) -> str:
    """A batch record's result as stored: its answer as compact JSON (artifacts are read through the files routes)."""
    return _COMPACT.encode(answer(outcome, {}))


def record_job(service_part: Job, inputs: dict[str, Any], workdir: str) -> Job:
    """``service_part`` with one record's inputs and folder: a copy of its fields, not a ``dataclasses.replace``.

    Frozen dataclasses refuse attribute assignment, not a new instance's own ``__dict__``; this runs for every
    record of a batch, and ``replace`` (which rebuilds through ``__init__``) costs several times more.
    """
    job = object.__new__(Job)
    fields = job.__dict__
    fields.update(service_part.__dict__)
    fields["inputs"] = inputs
    fields["workdir"] = workdir
    return job


class InputError(ValueError):
    """An input value does not fit its declared type."""


def bind_inputs(job: Job, bind: Callable[[str, Any], Any]) -> list[tuple[str, Any]]:
    """Each declared input's name and its value as ``bind(kind, value)`` makes it for a runtime; an
    :class:`InputError` names the input whose value does not fit its type."""
    bound = []
    for name, kind in job.input_types:
        try:
            bound.append((name, bind(kind, job.inputs.get(name))))
        except InputError as exc:
            raise InputError(f"input '{name}' ({kind}): {exc}") from None
    return bound


class LoadedService(Protocol):
    """A service revision loaded in a worker, whatever its runtime (built by its runtime's ``loader``).

    The class raises when the service cannot load (its model objects, its ``initCode``).
    """

    def evaluate(self, job: Job) -> tuple[str, str, dict[str, Any]]:
        """Run ``code`` for one record in the current working folder: (error, console output, outputs)."""
        ...


def format_error(exc: BaseException) -> str:
    """The error text of a failed execution: the exception and the frames of the service's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<")]
    lines = [f"  line {f.lineno} in {f.name} ({f.filename[1:-1]})" for f in frames]
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return head + ("\n" + "\n".join(lines) if lines else "")
