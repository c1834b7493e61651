"""The protocol as data: request specs, answers, retry classification and error mapping. No I/O here.

A call of the API is a *flow* (see :mod:`airflow_mlserver.client.calls`): a generator that yields
:class:`Wire` requests (or :class:`Sleep` pauses) and receives :class:`Answer` objects. The drivers
(:mod:`~airflow_mlserver.client.sync`, :mod:`~airflow_mlserver.client.aio`) only move bytes; what is worth a
retry, and which exception an error answer becomes, is decided here, once for both.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
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
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.streaming import BatchReader, ErrorBodyReader, JsonReader
from airflow_mlserver.client.tls import tls_error, tls_refusal
from airflow_mlserver.client.transport import TransportFailure, failure_sentences

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
    :param body: The body, encoded (JSON unless ``content_type`` says otherwise).
    :param idempotent: Whether the request may be resent when unknown whether the server acted.
    :param read: How to read a success answer: whole JSON, a batch answer's head, all of it, or a stream.
    :param authenticated: Whether to send the bearer token.
    :param scope: What a 404 means: which thing was not found.
    :param subject: The thing named in a not-found message ("Web service 'x' version '1'").
    :param content_type: The body's media type (a model object's bytes are ``application/octet-stream``).
    :param headers: Further request headers (a batch start's ``Idempotency-Key``).
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
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """Method and path, for messages (a long path is cut)."""
        return f"{self.method} {shortened(self.path)}"

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
    """A failure worth retrying; ``sent`` tells whether the server may have acted on the request.

    ``failure`` is what went wrong on the way, for a failure with no answer (its kind words the final error).
    """

    def __init__(
        self,
        reason: str,
        sent: bool,
        status: int | None = None,
        retry_after: float | None = None,
        failure: TransportFailure | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.status = status
        self.retry_after = retry_after
        self.failure = failure


class AmbiguousSend(Exception):
    """A non-idempotent request failed after it may have reached the server (handled by its flow)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: A call of the API: yields requests and pauses, receives answers, returns the call's result.
Flow = Generator[Wire | Sleep, Answer | None, T]


#: What a name, a version, an id or a file name in a path may not hold: path separators, control characters.
_NOT_IN_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


def valid_segment(value: object) -> bool:
    """Whether ``value`` can be one path segment: a non-blank string, no separator or control character."""
    return (
        isinstance(value, str)
        and bool(value.strip())
        and value not in (".", "..")
        and _NOT_IN_SEGMENT.search(value) is None
    )


def check_segment(value: object, what: str, advice: str) -> str:
    """``value``, if it can be one path segment; else refused as invalid (never sent, so never "not found").

    :param what: What the value is, for the message ("Web service name").
    :param advice: Where a valid one comes from ("use the id start_batch() answered").
    """
    if not valid_segment(value):
        raise MLServerConfigError(
            f"{what} must be a non-empty string without '/', '\\' or control characters (and not '.' or '..'), "
            f"not {quoted(value)}: {advice}."
        )
    assert isinstance(value, str)
    return value


def quote(value: str) -> str:
    """One checked path segment, percent-encoded (a ``/`` in a name cannot reach another route)."""
    return urllib.parse.quote(value, safe="")


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
    reason = f"HTTP {status}: {message}"
    if not wire.spec.idempotent and status not in NOT_PROCESSED_STATUSES:
        raise AmbiguousSend(reason)
    raise Transient(
        reason,
        sent=True,
        status=status,
        retry_after=retry_after(headers.get("Retry-After")),
    )


@contextlib.contextmanager
def classified(
    wire: Wire,
    failure_of: Callable[[BaseException], Transient | None],
    settings: ConnectionSettings | None = None,
) -> Iterator[None]:
    """Turn a transport failure into its retry class; ``failure_of`` knows one driver's exceptions.

    A TLS failure that no retry mends (:func:`~airflow_mlserver.client.tls.tls_refusal`: a refused certificate,
    a server that does not answer in TLS) is looked for first, whatever the driver, and raised at once as
    :class:`~airflow_mlserver.client.errors.MLServerTLSError`, for ``settings`` (the drivers always give them:
    the message names the server's URL and the connection).
    """
    try:
        yield
    except (Transient, AmbiguousSend, MLServerError):
        raise
    except Exception as exc:
        refusal = tls_refusal(exc)
        if refusal is not None:
            raise tls_error(settings, wire.spec, refusal) from None
        failure = failure_of(exc)
        if failure is None:
            raise
        if failure.sent and not wire.spec.idempotent:
            raise AmbiguousSend(failure.reason) from exc
        raise failure from exc


class UnreachedRun(tenacity.stop.stop_base):
    """A stop condition: one request's attempts have failed without reaching the server for too long.

    A refused connection, an unknown host or a connect timeout (:class:`Transient` with ``sent=False``)
    starts or continues an unbroken run of such failures; any other outcome ends it.

    :param budget: Seconds such a run may last before the request gives up.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.attempt_started = time.monotonic()
        self.since: float | None = None

    def before(self, state: tenacity.RetryCallState) -> None:
        self.attempt_started = time.monotonic()

    def left(self, state: tenacity.RetryCallState) -> float | None:
        """Seconds left of the budget after an unreached failure; None after any other outcome."""
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, Transient) or exc.sent:
            self.since = None
            return None
        if self.since is None:
            self.since = self.attempt_started
        return self.budget - (time.monotonic() - self.since)

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        left = self.left(state)
        return left is not None and left <= 0


class Backoff(tenacity.wait.wait_base):
    """Exponential backoff with jitter, or the server's ``Retry-After`` when it gives one.

    After an unreached failure the wait is cut to what is left of the run's budget, so the last attempt
    happens as the budget ends rather than after it.
    """

    def __init__(self, initial: float, maximum: float, unreached: UnreachedRun) -> None:
        self.maximum = maximum
        self.exponential = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
        self.unreached = unreached

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self.exponential(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER) + wait * 0.1
        left = self.unreached.left(retry_state)
        return wait if left is None else max(0.0, min(wait, left))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is resent after a :class:`Transient` failure.

    Two kinds of failure have two budgets. A request that reached the server without a usable answer
    (429, 502, 503, 504, no answer in time, an answer cut off) is resent up to ``max_retries`` times with
    backoff, about two minutes with the defaults: that server is up, busy or restarting, and worth waiting
    for. A request that never reached a server (connection refused, unknown host, no connection within
    the connect timeout) is resent only while such failures have lasted less than ``unreached_for``
    seconds, 15 by default: waiting rarely mends a server that is down, or a wrong host or port, and the
    caller should learn of it soon. A server that comes back within that time is still reached.

    :param max_retries: Retries after the first attempt, whatever the failure.
    :param wait: First backoff wait in seconds (doubles each retry, plus up to as much jitter).
    :param wait_max: Longest backoff wait in seconds.
    :param unreached_for: Longest time, in seconds, that an unbroken run of failures where nothing reached
        the server is retried for, counted from the start of the run's first attempt.
    """

    max_retries: int
    wait: float = 1.0
    wait_max: float = 30.0
    unreached_for: float = 15.0

    def tenacity_args(self, settings: ConnectionSettings, spec: Spec, log: Any) -> dict[str, Any]:
        """The arguments of ``tenacity.Retrying`` / ``AsyncRetrying`` for one request.

        Once the retries or the unreached budget are spent, the last :class:`Transient` failure becomes the
        error a caller sees (:func:`exhausted_error`).
        """
        unreached = UnreachedRun(self.unreached_for)

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            log.warning(
                "%s failed (%s); retry %d of %d in %.1f s",
                spec.label,
                exc,
                state.attempt_number,
                self.max_retries,
                wait,
            )

        def give_up(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, Transient)
            raise exhausted_error(settings, spec, exc, state.attempt_number) from None

        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1) | unreached,
            "wait": Backoff(self.wait, self.wait_max, unreached),
            "retry": tenacity.retry_if_exception_type(Transient),
            "before": unreached.before,
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


def exhausted_error(settings: ConnectionSettings, spec: Spec, exc: Transient, attempts: int) -> MLServerError:
    """The error of a request that failed transiently on every one of its ``attempts``."""
    if exc.status is not None:
        to = "its only attempt" if attempts == 1 else f"all {attempts} attempts"
        return MLServerApiError(
            f"Could not {spec.what}: {spec.label} answered {exc.status} ({exc.reason}) to {to}. "
            "The server is overloaded or unavailable: retry later, or raise the connection's max_retries.",
            exc.status,
            exc.reason,
            spec.method,
            spec.path,
        )
    failure = exc.failure or TransportFailure("other", exc.sent, exc.reason)
    cause, fix = failure_sentences(failure, settings.base_url, f"connection '{settings.conn_id}'")
    tried = "tried once" if attempts == 1 else f"tried {attempts} times"
    return MLServerConnectionError(f"Could not {spec.what} ({spec.label}, {tried}): {cause}. {fix}")


def api_error(spec: Spec, answer: Answer) -> MLServerApiError:
    """The exception an error answer becomes: by status, and for a 404 by what the spec looked for."""
    status, message = answer.status, answer.error_message
    where = f"{spec.label} answered {status}: {message}"
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
