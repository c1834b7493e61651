"""A failed connection in the provider's words: what happened between the client and the server, and what to do.

Both drivers meet the same few failures through different libraries: ``requests`` wraps urllib3, which wraps the
socket module's errors; aiohttp wraps them its own way. :func:`transport_failure` reads an exception down its
causes and answers a :class:`TransportFailure`: its kind (a refused connection, an unknown host name, no answer
in time...), whether the request may have reached the server (what the retry rules need) and a few words for a
log line. :func:`failure_sentences` turns one into what a person reads in an error: the cause, naming the server's
URL, and the fix, naming the connection's field. Neither quotes a library's text (``HTTPConnection(host=...)``,
``[Errno 111]``, ``Max retries exceeded``): a task's log and the connection's Test read the same, whichever driver
failed.

Pure: no I/O, and no HTTP library imported (their exceptions are known by class name, the socket module's by
class and errno).
"""

from __future__ import annotations

import errno
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from airflow_mlserver.client.quoting import quoted

FailureKind = Literal[
    "unknown_host", "refused", "unreachable", "connect_timeout", "read_timeout", "closed", "cut_off", "other"
]

#: The libraries' exception classes that mean each kind, by name (urllib3, requests, aiohttp, http.client).
_NAMES: dict[FailureKind, frozenset[str]] = {
    "unknown_host": frozenset({"NameResolutionError", "ClientConnectorDNSError"}),
    "connect_timeout": frozenset({"ConnectTimeoutError", "ConnectTimeout", "ConnectionTimeoutError"}),
    "read_timeout": frozenset(
        {"ReadTimeoutError", "ReadTimeout", "SocketTimeoutError", "ServerTimeoutError"}
    ),
    "closed": frozenset({"RemoteDisconnected", "ServerDisconnectedError", "BadStatusLine"}),
    "cut_off": frozenset(
        {"IncompleteRead", "ChunkedEncodingError", "ClientPayloadError", "ContentLengthError"}
    ),
}
#: Classes that say no connection was made, whatever the cause below them.
_NEVER_CONNECTED = frozenset({"NewConnectionError", "ClientConnectorError", "NameResolutionError"})
#: Which kind wins when an exception's causes say several (a timeout inside a connect timeout is one).
_PRIORITY: tuple[FailureKind, ...] = (
    "unknown_host",
    "refused",
    "unreachable",
    "connect_timeout",
    "read_timeout",
    "closed",
    "cut_off",
)


@dataclass(frozen=True)
class TransportFailure:
    """What went wrong on the way to the server or back, read from a driver's exception.

    :param kind: ``unknown_host``, ``refused``, ``unreachable`` (no route to the host), ``connect_timeout``,
        ``read_timeout`` (connected, no answer in time), ``closed`` (closed without answering), ``cut_off`` (the
        answer broke off midway) or ``other``.
    :param sent: Whether the request may have reached the server (False only when no connection was made).
    :param detail: A few words for a log line: ``connection refused``, ``no answer within 60 s``.
    :param seconds: The timeout that ran out, for the timeouts.
    """

    kind: FailureKind
    sent: bool
    detail: str
    seconds: float | None = None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps, however a library wraps it: ``requests`` and urllib3 (``args``, ``reason``),
    aiohttp (``certificate_error``, ``os_error``), ``raise ... from``. Not ``__context__``: an exception that was
    being handled when the failure happened is not its cause."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 32:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, name, None) for name in ("certificate_error", "os_error", "reason")]
        todo += [*(a for a in item.args if isinstance(a, BaseException)), item.__cause__]


def _kinds(cause: BaseException) -> set[FailureKind]:
    names = {c.__name__ for c in type(cause).__mro__}
    found: set[FailureKind] = {kind for kind, known in _NAMES.items() if names & known}
    if isinstance(cause, socket.gaierror):
        found.add("unknown_host")
    elif isinstance(cause, ConnectionRefusedError):
        found.add("refused")
    elif isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        found.add("unreachable")
    elif isinstance(cause, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        found.add("closed")
    return found


def transport_failure(
    exc: BaseException, connect_timeout: float | None = None, read_timeout: float | None = None
) -> TransportFailure | None:
    """The failure behind a driver's exception, or None when it is not a transport failure at all.

    :param connect_timeout: Seconds the driver waits for a connection (named when it runs out).
    :param read_timeout: Seconds it waits for an answer (named when it runs out).
    """
    found: set[FailureKind] = set()
    never_connected = False
    timeout = connection = False
    for cause in causes(exc):
        found |= _kinds(cause)
        names = {c.__name__ for c in type(cause).__mro__}
        never_connected = never_connected or bool(names & _NEVER_CONNECTED)
        timeout = timeout or isinstance(cause, TimeoutError)
        connection = connection or isinstance(cause, ConnectionError | OSError) or "ConnectionError" in names
    if not found and timeout:
        found.add("connect_timeout" if never_connected else "read_timeout")
    kind = next((k for k in _PRIORITY if k in found), None)
    if kind is None:
        if not (connection or never_connected):
            return None
        # the operating system's words, if it gave any ("Connection reset by peer"), never a library's
        said = [c.strerror for c in causes(exc) if isinstance(c, OSError) and c.strerror]
        what = "no connection could be made" if never_connected else "the connection failed"
        return TransportFailure("other", not never_connected, f"{what} ({said[-1]})" if said else what)
    sent = kind in ("read_timeout", "closed", "cut_off") and not never_connected
    seconds = (
        connect_timeout if kind == "connect_timeout" else read_timeout if kind == "read_timeout" else None
    )
    within = f" within {seconds:g} s" if seconds is not None else " in time"
    detail = {
        "unknown_host": "host name not found",
        "refused": "connection refused",
        "unreachable": "no network route to the host",
        "connect_timeout": f"no connection{within}",
        "read_timeout": f"no answer{within}",
        "closed": "the server closed the connection without answering",
        "cut_off": "the answer was cut off",
    }[kind]
    return TransportFailure(kind, sent, detail, seconds)


def failure_sentences(failure: TransportFailure, base_url: str, conn: str) -> tuple[str, str]:
    """The cause (no capital, no full stop) and the fix (a sentence) of a failure to reach ``base_url``.

    :param conn: How to name the connection: ``connection 'mlserver_default'``, or ``this connection``.
    """
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    within = f" within {failure.seconds:g} s" if failure.seconds is not None else " in time"
    hosts = f"Check the host and port of {conn}"
    kind = failure.kind
    if kind == "refused":
        return (
            f"nothing answers at {base_url} (connection refused)",
            f"{hosts}, and that the server is running.",
        )
    if kind == "unknown_host":
        return (
            f"the host name {quoted(host)} is not known to the DNS, so {base_url} cannot be reached",
            f"Check the host of {conn}: its spelling, or whether only another network (a VPN, a cluster's DNS) "
            "knows it.",
        )
    if kind == "unreachable":
        return (
            f"there is no network route to {quoted(host)}, so {base_url} cannot be reached",
            f"Check the host of {conn}, and the network of the machines that run the tasks.",
        )
    if kind == "connect_timeout":
        return (
            f"no connection to {base_url}{within}",
            f"{hosts}, that the server is running and that no firewall drops the traffic.",
        )
    if kind == "read_timeout":
        return (
            f"{base_url} took the request but sent no answer{within}",
            "Check that a Machine Learning Server serves that address and is not overloaded, or raise the "
            f"Timeout (seconds) of {conn}.",
        )
    if kind == "closed":
        return (
            f"{base_url} closed the connection without answering",
            "Check that a Machine Learning Server serves that address, over the schema (http or https) it "
            "expects, and look at its logs.",
        )
    if kind == "cut_off":
        return (
            f"the answer from {base_url} was cut off midway",
            "The server or a proxy closed the connection: retry later, and look at the server's logs if it "
            "happens again.",
        )
    return f"{failure.detail} at {base_url}", f"{hosts}, and that the server is running."


__all__ = ["FailureKind", "TransportFailure", "causes", "failure_sentences", "transport_failure"]
