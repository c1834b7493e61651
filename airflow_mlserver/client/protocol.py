"""The protocol as data: request specs, answers, retry classification and error mapping. No I/O here.

A call of the API is a *flow* (see :mod:`airflow_mlserver.client.calls`): a generator that yields
:class:`Wire` requests (or :class:`Sleep` pauses) and receives :class:`Answer` objects. The drivers
(:mod:`~airflow_mlserver.client.sync`, :mod:`~airflow_mlserver.client.aio`) only move bytes; what is worth a
retry, and which exception an error answer becomes, is decided here, once for both.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import tenacity

from airflow_mlserver.client.errors import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    MLServerApiError,
    MLServerConnectionError,
    MLServerError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.streaming import BatchReader, ErrorBodyReader, JsonReader

T = TypeVar("T")

#: Statuses worth retrying: the server (or a gateway) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Of those, the ones that say the request was not processed, so even a non-idempotent call may be resent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
#: Longest ``Retry-After`` honoured; a longer one is cut to this.
MAX_RETRY_AFTER = 120.0
#: Bytes read from the network at a time.
CHUNK_SIZE = 64 * 1024

ReadMode = Literal["json", "batch_head", "batch_full", "stream"]
Scope = Literal["service", "execution", "artifact", "none"]


@dataclass(frozen=True)
class Spec:
    """One logical API request: what to send, how to read the answer and how to explain its errors.

    :param method: The HTTP method.
    :param path: The path below the server's base URL (quoted).
    :param what: What the call does, for messages ("get batch execution 'x'").
    :param params: Query parameters.
    :param body: The JSON body, encoded.
    :param idempotent: Whether the request may be resent when unknown whether the server acted.
    :param read: How to read a success answer: whole JSON, a batch answer's head, all of it, or a stream.
    :param authenticated: Whether to send the bearer token.
    :param scope: What a 404 means: which thing was not found.
    :param subject: The thing named in a not-found message ("Web service 'x' version '1'").
    """

    method: str
    path: str
    what: str
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    idempotent: bool = True
    read: ReadMode = "json"
    authenticated: bool = True
    scope: Scope = "none"
    subject: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def reader(self) -> JsonReader | BatchReader | None:
        """The incremental reader of a success answer (None: the caller reads the stream itself)."""
        if self.read == "json":
            return JsonReader(self.label)
        if self.read in ("batch_head", "batch_full"):
            return BatchReader(self.label, head_only=self.read == "batch_head")
        return None


@dataclass(frozen=True)
class Wire:
    """A request ready to send: the spec plus the headers of this attempt (the token is not in ``repr``)."""

    spec: Spec
    headers: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class Sleep:
    """A pause a flow asks for (the async driver must not block the loop)."""

    seconds: float


@dataclass
class Answer:
    """An answer: status and headers, the parsed body, or the live response of a ``stream`` read."""

    status: int
    headers: Mapping[str, str]
    value: Any = None
    error_message: str = ""
    stream: Any = None


class AnswerBody:
    """Reads one answer's body, chunk by chunk, as its spec says; both drivers feed it the same way.

    An error answer's message is read (at most 64 KiB); a ``stream`` answer is not read at all
    (:attr:`streamed`): the caller gets the live response.
    """

    def __init__(self, wire: Wire, status: int, headers: Mapping[str, str]) -> None:
        self.wire = wire
        self.status = status
        self.headers = headers
        self.reader = ErrorBodyReader() if status >= 400 else wire.spec.reader()

    @property
    def streamed(self) -> bool:
        return self.reader is None

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read if self.reader is not None else 0

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes; True when nothing more is needed (a status poll has its head)."""
        assert self.reader is not None
        return self.reader.feed(chunk)

    def finish(self, complete: bool) -> Answer:
        """The answer; raises :class:`Transient` or :class:`AmbiguousSend` for a status worth retrying."""
        reader = self.reader
        assert reader is not None
        if isinstance(reader, ErrorBodyReader):
            message = reader.finish(True)
            check_status(self.wire, self.status, self.headers, message)
            return Answer(self.status, self.headers, error_message=message)
        return Answer(self.status, self.headers, value=reader.finish(complete))


class Transient(Exception):
    """A failure worth retrying; ``sent`` tells whether the server may have acted on the request."""

    def __init__(
        self, reason: str, sent: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.status = status
        self.retry_after = retry_after


class AmbiguousSend(Exception):
    """A non-idempotent request failed after it may have reached the server (handled by its flow)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: A call of the API: yields requests and pauses, receives answers, returns the call's result.
Flow = Generator[Wire | Sleep, Answer | None, T]


def quote(value: str) -> str:
    """One path segment, quoted (a ``/`` in a name cannot reach another route)."""
    return urllib.parse.quote(str(value), safe="")


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def check_status(wire: Wire, status: int, headers: Mapping[str, str], message: str) -> None:
    """Raise :class:`Transient` (or :class:`AmbiguousSend`) for an error status worth retrying."""
    if status not in RETRY_STATUSES:
        return
    if not wire.spec.idempotent and status not in NOT_PROCESSED_STATUSES:
        raise AmbiguousSend(f"HTTP {status}: {message}")
    raise Transient(
        f"HTTP {status}: {message}",
        sent=True,
        status=status,
        retry_after=retry_after(headers.get("Retry-After")),
    )


@contextlib.contextmanager
def classified(wire: Wire, failure_of: Callable[[BaseException], Transient | None]) -> Iterator[None]:
    """Turn a transport failure into its retry class; ``failure_of`` knows one driver's exceptions."""
    try:
        yield
    except (Transient, AmbiguousSend, MLServerError):
        raise
    except Exception as exc:
        failure = failure_of(exc)
        if failure is None:
            raise
        if failure.sent and not wire.spec.idempotent:
            raise AmbiguousSend(failure.reason) from exc
        raise failure from exc


class Backoff(tenacity.wait.wait_base):
    """Exponential backoff with jitter, or the server's ``Retry-After`` when it gives one."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.maximum = maximum
        self.exponential = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self.exponential(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER) + wait * 0.1
        return wait


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is resent after a :class:`Transient` failure.

    :param max_retries: Retries after the first attempt.
    :param wait: First backoff wait in seconds (doubles each retry, plus up to as much jitter).
    :param wait_max: Longest backoff wait in seconds.
    """

    max_retries: int
    wait: float = 1.0
    wait_max: float = 30.0

    def tenacity_args(self, settings: ConnectionSettings, spec: Spec, log: Any) -> dict[str, Any]:
        """The arguments of ``tenacity.Retrying`` / ``AsyncRetrying`` for one request.

        Once the retries are spent, the last :class:`Transient` failure becomes the error a caller sees
        (:func:`exhausted_error`).
        """

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            log.warning(
                "%s %s failed (%s); retry %d of %d in %.1f s",
                spec.method,
                spec.path,
                exc,
                state.attempt_number,
                self.max_retries,
                wait,
            )

        def give_up(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, Transient)
            raise exhausted_error(settings, spec, exc) from None

        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": Backoff(self.wait, self.wait_max),
            "retry": tenacity.retry_if_exception_type(Transient),
            "before_sleep": log_retry,
            "retry_error_callback": give_up,
        }


def resume(flow: Flow[T], outcome: Answer | AmbiguousSend | None) -> Wire | Sleep:
    """Hand a flow the outcome of its last step (an answer, or an ambiguous send thrown in); answer its next.

    ``StopIteration`` carries the flow's result, as for any generator.
    """
    if isinstance(outcome, AmbiguousSend):
        return flow.throw(outcome)
    return flow.send(outcome)


def exhausted_error(settings: ConnectionSettings, spec: Spec, exc: Transient) -> MLServerError:
    """The error of a request that failed transiently on every attempt."""
    attempts = settings.max_retries + 1
    if exc.status is not None:
        to = "its only attempt" if attempts == 1 else f"all {attempts} attempts"
        return MLServerApiError(
            f"Could not {spec.what}: {spec.method} {spec.path} answered {exc.status} ({exc.reason}) to {to}. "
            "The server is overloaded or unavailable: retry later, or raise the connection's max_retries.",
            exc.status,
            exc.reason,
            spec.method,
            spec.path,
        )
    failed = "once" if attempts == 1 else f"{attempts} times, last"
    return MLServerConnectionError(
        f"Could not {spec.what}: {spec.method} {spec.path} at {settings.base_url} failed {failed}: {exc.reason}. "
        f"Check that the server runs and that the host and port of connection '{settings.conn_id}' are right."
    )


def api_error(spec: Spec, answer: Answer) -> MLServerApiError:
    """The exception an error answer becomes: by status, and for a 404 by what the spec looked for."""
    status, message = answer.status, answer.error_message
    where = f"{spec.method} {spec.path} answered {status}: {message}"
    cls: type[MLServerApiError] = MLServerApiError
    if status == 404 and spec.scope != "none":
        text = message.lower()
        if spec.scope == "service" or (
            "web service" in text and ("not found" in text or "no version" in text)
        ):
            cls, advice = (
                ServiceNotFoundError,
                "Check the name and version; list_services() shows what is published.",
            )
        elif spec.scope == "execution" or ("batch execution" in text and "not found" in text):
            cls = ExecutionNotFoundError
            advice = "Check the execution id; list_batch_executions() gives the ids the server knows."
        else:
            cls = ArtifactNotFoundError
            advice = "Record indexes count from 0; list_artifacts() gives a record's file names."
        return cls(
            f"{spec.subject} was not found ({where}). {advice}", status, message, spec.method, spec.path
        )
    if status == 403 and spec.scope == "service" and spec.method == "POST":
        return ServiceExistsError(
            f"{spec.subject} exists already ({where}). Publish a new version, or pass replace=True.",
            status,
            message,
            spec.method,
            spec.path,
        )
    advice = {
        400: "The server refused the request as invalid: fix what its message names.",
        403: "The connection's user lacks the permission: ask the service's owner or an administrator.",
        413: "The request is too large for the server: send fewer records per batch.",
    }.get(status, "The server failed: check its logs, and retry later." if status >= 500 else "")
    return cls(f"Could not {spec.what} ({where}). {advice}".rstrip(), status, message, spec.method, spec.path)
