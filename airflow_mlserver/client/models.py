"""Typed, immutable views of the objects the Machine Learning Server API answers with.

Each ``from_api`` reads the wire form of the contract (``../shared/reference/mlserver-api.md``), accepts the
spellings real servers and clients disagree on, and raises :class:`MalformedResponseError` naming the field
when an answer lacks what the contract promises, so a broken server fails loudly instead of late.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_mlserver.client.errors import MalformedResponseError
from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.streaming import WireRecord

_T = TypeVar("_T")

_FINISHED_STATES = ("complete", "failed", "canceled", "cancelled")

_MISSING = object()


def _field(
    obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, default: Any = _MISSING
) -> Any:
    """``obj[key]`` checked against ``kind``; a missing or mistyped field raises MalformedResponseError."""
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise MalformedResponseError(
                f"The server's {what} has no '{key}' field. The server does not follow the Machine Learning "
                "Server API: check the connection points at a Machine Learning Server (or a compatible one)."
            )
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise MalformedResponseError(
            f"The server's {what} has '{key}' = {quoted(value)} ({type(value).__name__}), expected {names}. The server "
            "does not follow the Machine Learning Server API."
        )
    return value


def _strings(obj: dict[str, Any], key: str, what: str) -> list[str]:
    """``obj[key]``, a list of strings (missing: empty); anything else raises MalformedResponseError."""
    items: list[Any] = _field(obj, key, list, what, [])
    return _only_strings(items, key, what)


def _only_strings(items: list[Any], key: str, what: str) -> list[str]:
    wrong = [i for i in items if not isinstance(i, str)]
    if wrong:
        raise MalformedResponseError(
            f"The server's {what} has '{key}' holding {quoted(wrong[0])} ({type(wrong[0]).__name__}), expected "
            "strings only. The server does not follow the Machine Learning Server API."
        )
    return items


def _shaped(value: Any, kind: type[_T], problem: str) -> _T:
    """``value`` if it is a ``kind``; else the server does not follow the contract (``problem`` says how)."""
    if not isinstance(value, kind):
        raise MalformedResponseError(
            f"{problem}: {quoted(value)}. The server does not follow the Machine Learning Server API."
        )
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    problem = f"The server answered {type(value).__name__} where a {what} object was expected"
    return _shaped(value, dict, problem)


def answer_list(value: Any, what: str) -> list[Any]:
    """The answer to ``what`` (e.g. ``GET /services``), which the contract says is a list."""
    return _shaped(value, list, f"The server's answer to {what} is a {type(value).__name__}, not a list")


def answer_object(value: Any, what: str) -> dict[str, Any]:
    """The answer to ``what``, which the contract says is a JSON object."""
    problem = f"The server's answer to {what} is a {type(value).__name__}, not an object"
    return _shaped(value, dict, problem)


@dataclass(frozen=True)
class ParameterDefinition:
    """One declared input or output of a web service: its variable name and its contract type.

    The type is kept as the server spelled it; :mod:`airflow_mlserver.client.parameters` says what each of the
    contract's types means.
    """

    name: str
    type: str

    @classmethod
    def from_api(cls, value: Any, what: str = "parameter definition") -> ParameterDefinition:
        obj = _object(value, what)
        return cls(name=_field(obj, "name", str, what), type=_field(obj, "type", str, what))

    def to_api(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


@dataclass(frozen=True)
class ServiceDefinition:
    """What publishing a web service sends: its code, declared inputs and outputs, and artifact names.

    :param code: The code run for each execution (Python or R text).
    :param inputs: Declared inputs, as ``{name: type}`` or parameter definitions.
    :param outputs: Declared outputs, likewise.
    :param init_code: Code run once before the first execution.
    :param output_file_names: Files the code writes that come back as artifacts.
    :param operation_id: The consume function's name.
    :param description: Free text.
    :param runtime_type: ``Python`` or ``R``.
    :param snapshot_id: A session snapshot whose model objects the code uses.
    """

    code: str
    inputs: Mapping[str, str] | Sequence[ParameterDefinition] = ()
    outputs: Mapping[str, str] | Sequence[ParameterDefinition] = ()
    init_code: str | None = None
    output_file_names: Sequence[str] = ()
    operation_id: str | None = None
    description: str | None = None
    runtime_type: str = "Python"
    snapshot_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The body of ``POST /services/{name}[/{version}]`` (fields left unset are not sent)."""
        body: dict[str, Any] = {
            "code": self.code,
            "initCode": self.init_code,
            "runtimeType": self.runtime_type,
            "inputParameterDefinitions": [p.to_api() for p in _definitions(self.inputs)],
            "outputParameterDefinitions": [p.to_api() for p in _definitions(self.outputs)],
            "outputFileNames": list(self.output_file_names),
            "operationId": self.operation_id,
            "description": self.description,
            "snapshotId": self.snapshot_id,
        }
        return {k: v for k, v in body.items() if v is not None}


def _definitions(value: Mapping[str, str] | Sequence[ParameterDefinition]) -> list[ParameterDefinition]:
    if isinstance(value, Mapping):
        return [ParameterDefinition(name, kind) for name, kind in value.items()]
    return list(value)


@dataclass(frozen=True)
class WebService:
    """A published version of a web service, as ``GET /services`` describes it.

    :param name: The service name.
    :param version: The version string.
    :param inputs: Declared inputs, in the order records are laid out.
    :param outputs: Declared outputs.
    :param output_file_names: Files the service writes that come back as artifacts.
    :param operation_id: The consume function's name (``operationId``).
    :param description: Free text.
    :param runtime_type: ``Python`` or ``R``.
    :param creation_time: When the version was published (as the server formats it).
    :param published_by: The publishing user (``versionPublishedBy``).
    :param snapshot_id: The snapshot the service was published from, if any.
    :param permission: The caller's permission (``myPermissionOnService``).
    """

    name: str
    version: str
    inputs: tuple[ParameterDefinition, ...] = ()
    outputs: tuple[ParameterDefinition, ...] = ()
    output_file_names: tuple[str, ...] = ()
    operation_id: str | None = None
    description: str = ""
    runtime_type: str | None = None
    creation_time: str | None = None
    published_by: str | None = None
    snapshot_id: str | None = None
    permission: str | None = None

    @classmethod
    def from_api(cls, value: Any) -> WebService:
        what = "web service description"
        obj = _object(value, what)

        def params(key: str) -> tuple[ParameterDefinition, ...]:
            items = _field(obj, key, list, what, [])
            return tuple(ParameterDefinition.from_api(p, f"{what}'s {key} item") for p in items)

        files = _strings(obj, "outputFileNames", what)
        return cls(
            name=_field(obj, "name", str, what),
            version=_field(obj, "version", str, what),
            inputs=params("inputParameterDefinitions"),
            outputs=params("outputParameterDefinitions"),
            output_file_names=tuple(files),
            operation_id=_field(obj, "operationId", str, what, None),
            description=_field(obj, "description", str, what, ""),
            runtime_type=_field(obj, "runtimeType", str, what, None),
            creation_time=_field(obj, "creationTime", str, what, None),
            published_by=_field(obj, "versionPublishedBy", str, what, None),
            snapshot_id=_field(obj, "snapshotId", str, what, None),
            permission=_field(obj, "myPermissionOnService", str, what, None),
        )


@dataclass(frozen=True)
class TokenInfo:
    """An access token and what is needed to renew it; secrets are kept out of ``repr``.

    :param access_token: The bearer token.
    :param refresh_token: The token that buys a new access token, if the server gave one.
    :param expires_at: When the access token expires, in seconds of this machine's ``time.time()``
        (from ``expires_in`` when given, which is immune to clock skew, else from ``expires_on``).
    :param lifetime: Seconds the token was valid for when issued, if known.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    lifetime: float | None = None

    #: Refresh this long before expiry at most (a real server's tokens live an hour).
    MAX_LEAD_SECONDS = 60.0
    #: ... and at most this share of the token's lifetime, so short-lived tokens are not renewed constantly.
    LEAD_SHARE = 0.1
    #: ... but at least this long, so that a request started just before expiry still gets through.
    MIN_LEAD_SECONDS = 0.5

    @classmethod
    def from_api(cls, value: Any, now: float | None = None) -> TokenInfo:
        what = "login answer"
        obj = _object(value, what)
        now = time.time() if now is None else now
        access = _field(obj, "access_token", str, what)
        if not access:
            raise MalformedResponseError("The server's login answer has an empty 'access_token'.")
        refresh = _field(obj, "refresh_token", str, what, None) or None
        expires_in = _seconds(obj, "expires_in", what)
        expires_on = _seconds(obj, "expires_on", what)
        expires_at: float | None = None
        if expires_in is not None:
            # Servers count whole seconds: assume the token may lapse up to a second early.
            expires_at = now + expires_in - 1.0
            if expires_on is not None and abs(expires_on - (now + expires_in)) < 5.0:
                expires_at = min(expires_at, expires_on)  # same clock as ours: the stricter one holds
        elif expires_on is not None:
            expires_at = expires_on
        lifetime = None if expires_at is None else max(0.0, expires_at - now)
        return cls(access_token=access, refresh_token=refresh, expires_at=expires_at, lifetime=lifetime)

    def refresh_due(self, now: float | None = None) -> bool:
        """Whether the token should be renewed before its next use."""
        if self.expires_at is None:
            return False
        now = time.time() if now is None else now
        lead = self.MAX_LEAD_SECONDS
        if self.lifetime is not None and self.lifetime > 0:
            lead = min(lead, max(self.MIN_LEAD_SECONDS, self.lifetime * self.LEAD_SHARE))
        return now >= self.expires_at - lead


def _seconds(obj: dict[str, Any], key: str, what: str) -> float | None:
    """A time in seconds that servers send as a JSON number or a numeric string (``expires_on``); None if absent."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise MalformedResponseError(
            f"The server's {what} has '{key}' = {quoted(value)}, expected a number of seconds. The server does not "
            "follow the Machine Learning Server API."
        )
    return number


@dataclass(frozen=True)
class RecordResult:
    """The answer of one execution: a request-response call, or one record of a batch.

    :param index: Position in the batch's results list (0-based; equals the record's index once the
        execution has completed; ``0`` for a request-response call).
    :param success: Whether the service code ran without error.
    :param error_message: The error when it did not.
    :param console_output: What the code printed.
    :param outputs: Output values by output name.
    :param output_files: Base64 content of returned files by file name (request-response only).
    :param changed_files: Files the code wrote in its working folder.
    """

    index: int
    success: bool
    error_message: str = ""
    console_output: str = ""
    outputs: dict[str, Any] = field(default_factory=dict, hash=False)
    output_files: dict[str, str] = field(default_factory=dict, hash=False)
    changed_files: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, value: Any, index: int = 0) -> RecordResult:
        if type(value) is WireRecord:  # a batch result the C decoder already checked against this model
            # What the frozen dataclass's __init__ does (object.__setattr__ per field) at a third of its cost,
            # which counts when a batch streams 100,000 results.
            record = object.__new__(cls)
            record.__dict__.update(
                index=index,
                success=value.success,
                error_message=value.error_message or "",
                console_output=value.console_output or "",
                outputs=value.output_parameters or {},
                output_files=value.output_files or {},
                changed_files=tuple(value.changed_files or ()),
            )
            return record
        what = f"result of record {index}"
        obj = _object(value, what)
        files = _field(obj, "outputFiles", dict, what, {})
        _only_strings(list(files.values()), "outputFiles", what)  # base64 text, by file name
        return cls(
            index=index,
            success=_field(obj, "success", bool, what),
            error_message=_field(obj, "errorMessage", str, what, ""),
            console_output=_field(obj, "consoleOutput", str, what, ""),
            outputs=_field(obj, "outputParameters", dict, what, {}),
            output_files=files,
            changed_files=tuple(_strings(obj, "changedFiles", what)),
        )


class ResultsPage:
    """Consecutive results of a batch answer, as one read of the stream completed them: as columns (what a
    results table needs, without an object per record) or as :class:`RecordResult` objects.

    Keep a page only while reading it: one still referenced while the next read decodes has its objects promoted
    by the garbage collector, which then runs full collections (about 80 ms each in an Airflow worker's
    process, one or two per 100,000 results).

    :param items: The decoded results: :class:`~airflow_mlserver.client.streaming.WireRecord` (checked by the C
        decoder) or plain JSON values (checked here, by :meth:`RecordResult.from_api`).
    :param first: The position of the first of them in the batch's results list.
    """

    __slots__ = ("_items", "first")

    def __init__(self, items: list[Any], first: int) -> None:
        self._items, self.first = items, first

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RecordResult]:
        """The results as objects, one at a time (a malformed one raises :class:`MalformedResponseError`)."""
        for i, item in enumerate(self._items, self.first):
            yield RecordResult.from_api(item, i)

    def records(self) -> list[RecordResult]:
        """The results as a list of objects."""
        return list(self)

    def columns(self, outputs: Sequence[str]) -> tuple[list[bool], list[str | None], dict[str, list[Any]]]:
        """``success``, the error messages (None for none) and each of ``outputs`` (None where a record failed
        or left it out), one value per result."""
        items = self._items
        if not all(type(item) is WireRecord for item in items):
            records = self.records()  # checks what the C decoder did not
            return (
                [r.success for r in records],
                [r.error_message or None for r in records],
                {n: [r.outputs.get(n) if r.success else None for r in records] for n in outputs},
            )
        values = [(item.output_parameters or _NO_OUTPUTS) if item.success else _NO_OUTPUTS for item in items]
        return (
            [item.success for item in items],
            [item.error_message or None for item in items],
            {name: [v.get(name) for v in values] for name in outputs},
        )


_NO_OUTPUTS: Mapping[str, Any] = {}


@dataclass(frozen=True)
class BatchStatus:
    """State and counts of a batch execution, and its results when they were asked for.

    :param execution_id: The batch execution id.
    :param name: The service name.
    :param version: The service version.
    :param state: The state exactly as the server spelled it (compare with the ``is_*`` properties).
    :param total: Records in the execution (``totalItemCount``).
    :param completed: Records finished so far (``completedItemCount``).
    :param failed: Records whose code failed, when the server reports it.
    :param error_message: Why the execution failed, when the server says.
    :param results: The results list, or ``None`` when it was not read (a status poll).
    """

    execution_id: str
    name: str
    version: str
    state: str
    total: int
    completed: int
    failed: int | None = None
    error_message: str | None = None
    results: tuple[RecordResult, ...] | None = None

    @property
    def is_finished(self) -> bool:
        """Complete, failed or canceled: nothing will change any more. Unknown states count as running."""
        return self.state.strip().lower() in _FINISHED_STATES

    @property
    def is_running(self) -> bool:
        return not self.is_finished

    @property
    def is_complete(self) -> bool:
        return self.state.strip().lower() == "complete"

    @property
    def is_failed(self) -> bool:
        return self.state.strip().lower() == "failed"

    @property
    def is_canceled(self) -> bool:
        return self.state.strip().lower() in ("canceled", "cancelled")

    @classmethod
    def from_api(
        cls,
        value: Any,
        execution_id: str = "",
        name: str = "",
        version: str = "",
        results: tuple[RecordResult, ...] | None = None,
    ) -> BatchStatus:
        """Read the head fields of a batch answer; ``results`` are parsed separately (they may be streamed)."""
        what = "batch execution status"
        obj = _object(value, what)
        found_id = _field(obj, "batchExecutionId", str, what, None) or _field(
            obj, "BatchExecutionId", str, what, None
        )
        return cls(
            execution_id=found_id or execution_id,
            name=_field(obj, "name", str, what, name),
            version=_field(obj, "version", str, what, version),
            state=_field(obj, "state", str, what),
            total=_count(obj, "totalItemCount", what),
            completed=_count(obj, "completedItemCount", what),
            failed=_count(obj, "failedItemCount", what, None),
            error_message=_field(obj, "errorMessage", str, what, None) or None,
            results=results,
        )


def _count(obj: dict[str, Any], key: str, what: str, default: Any = _MISSING) -> Any:
    """A count of records: a whole number from 0 (``default`` when absent, if given)."""
    value = _field(obj, key, int, what, default)
    if isinstance(value, int) and value < 0:
        raise MalformedResponseError(
            f"The server's {what} has '{key}' = {value}, expected a count from 0. The server does not follow the "
            "Machine Learning Server API."
        )
    return value


def start_answer_execution_id(value: Any) -> str:
    """The execution id of a start-batch answer; real servers spell the key either way."""
    obj = _object(value, "start-batch answer")
    for key in ("batchExecutionId", "BatchExecutionId"):
        found = obj.get(key)
        if found is None:
            continue
        if not valid_segment(found):
            raise MalformedResponseError(
                f"The server's start-batch answer has '{key}' = {quoted(found)}, which is not an execution id. The "
                "server does not follow the Machine Learning Server API."
            )
        return str(found)
    raise MalformedResponseError(
        "The server's start-batch answer has no 'batchExecutionId' (nor 'BatchExecutionId') field: "
        f"{quoted(obj)}. The server does not follow the Machine Learning Server API."
    )
