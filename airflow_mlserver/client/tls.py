"""TLS, as both drivers meet it: a certificate refused, or a server that does not answer in TLS, is a
:class:`~airflow_mlserver.client.errors.MLServerTLSError` at once (never retried), whose message says what failed
and which connection field fixes it; a CA bundle is checked once per session; Verify TLS false is said once.

:func:`tls_refusal` reads either driver's exception (``requests`` and urllib3, or aiohttp) down to OpenSSL's own;
:func:`~airflow_mlserver.client.protocol.classified` asks it before any retry class.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import urllib.parse
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_mlserver.client.errors import MLServerTLSError
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.transport import causes

if TYPE_CHECKING:
    from airflow_mlserver.client.protocol import Spec

TLSProblem = Literal["untrusted", "host", "expired", "not_yet_valid", "refused", "not_tls"]

#: What OpenSSL's verify codes mean here: no trusted CA issued the certificate (unable to get the issuer's
#: certificate, 2; self-signed, 18, or one in the chain, 19; no local issuer certificate, 20; unable to verify the
#: first certificate, 21), it names another host (62) or IP address (64), it has expired (10), is not valid yet (9).
_VERIFY_PROBLEMS: dict[int, TLSProblem] = {
    2: "untrusted",
    18: "untrusted",
    19: "untrusted",
    20: "untrusted",
    21: "untrusted",
    62: "host",
    64: "host",
    10: "expired",
    9: "not_yet_valid",
}
#: OpenSSL's reasons when the answer to a TLS hello is not TLS (a plain-http server answered it).
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"})


@dataclass(frozen=True)
class TLSRefusal:
    """A TLS handshake that failed for good, read from a driver's exception by :func:`tls_refusal`.

    :param problem: What failed: ``untrusted`` (no CA the client trusts issued the certificate), ``host`` (it is
        issued for another host name), ``expired``, ``not_yet_valid``, ``refused`` (another certificate check),
        ``not_tls`` (the server does not answer in TLS).
    :param detail: OpenSSL's words (``certificate verify failed: unable to get local issuer certificate``).
    """

    problem: TLSProblem
    detail: str


def tls_refusal(exc: BaseException) -> TLSRefusal | None:
    """The TLS failure behind a transport error, when no retry can mend it; None for any other failure.

    A certificate the client refuses (unknown CA, another host name, expired...) is refused again on every
    attempt, and so is a hello that a plain-http server answers. A handshake cut off midway is not such a
    failure: the driver's classification retries it.
    """
    found: TLSRefusal | None = None
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            # aiohttp's own error is one too, without OpenSSL's code: the one it wraps comes next
            code, words = getattr(cause, "verify_code", None), getattr(cause, "verify_message", None)
            if code is None:
                found = found or TLSRefusal("refused", "certificate verify failed")
                continue
            problem = _VERIFY_PROBLEMS.get(code, "refused")
            words = str(words or "").rstrip(".")
            return TLSRefusal(
                problem, f"certificate verify failed: {words}" if words else "certificate verify failed"
            )
        if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS_REASONS:
            return TLSRefusal("not_tls", str(cause.reason).lower().replace("_", " "))
    return found


#: What skipping the certificate check costs, as a TLS refusal's message says.
_RISK = "(not recommended: whoever can intercept the traffic could then read the password and tokens)"


def tls_error(settings: ConnectionSettings | None, spec: Spec, refusal: TLSRefusal) -> MLServerTLSError:
    """The error of a request whose TLS handshake failed for good: the server's URL, what failed in plain words
    (and OpenSSL's), the connection field that fixes it. Never retried."""
    conn = f"connection '{settings.conn_id}'" if settings else "the connection"
    where = f" at {settings.base_url}" if settings else ""
    host = urllib.parse.urlsplit(settings.base_url).hostname if settings else None
    bundle = settings.verify if settings and isinstance(settings.verify, str) else None
    verify_field = f"the Verify TLS field (extra 'verify') of {conn}"
    problem = refusal.problem
    if problem in ("untrusted", "refused"):
        trusted = f"in the CA bundle {bundle} that {conn} names" if bundle else "that the workers trust"
        what = (
            f"the server's TLS certificate was not issued by a certificate authority (CA) {trusted}"
            if problem == "untrusted"
            else "the server's TLS certificate was refused"
        )
        fix = (
            f"Set {verify_field} to the path of the CA bundle (a PEM file) that issued the server's certificate, "
            f"as found on every worker and the triggerer, or to false to skip the check {_RISK}."
        )
    elif problem == "host":
        what = f"the server's TLS certificate is not issued for {quoted(host)}, the host name {conn} uses"
        fix = (
            f"Set the host of {conn} to a name the certificate is issued for, or {verify_field} to false to skip "
            f"the check {_RISK}."
        )
    elif problem in ("expired", "not_yet_valid"):
        what = f"the server's TLS certificate {'has expired' if problem == 'expired' else 'is not valid yet'}"
        fix = (
            "Have the server's certificate renewed, and check that the clocks of the workers and the server are "
            f"right; meanwhile {verify_field} set to false skips the check {_RISK}."
        )
    else:
        what = "the server does not answer in TLS: it likely serves plain http on that port"
        fix = f"Set the schema of {conn} to http, or its port to the server's https port."
    return MLServerTLSError(
        f"Could not {spec.what}: {spec.label}{where} failed: {what} ({refusal.detail}). {fix} "
        "Not retried: every attempt would fail the same way."
    )


def ca_context(settings: ConnectionSettings, verify: bool | str) -> ssl.SSLContext | None:
    """For ``verify`` a CA bundle (a file, or a folder of hashed certificates as ``requests`` accepts): a client
    context that trusts it, loaded now so that a bundle that cannot serve fails with its own message, before any
    request; None for ``verify`` True or False. Both drivers call it once per session for an https server."""
    if not isinstance(verify, str):
        return None
    folder = os.path.isdir(verify)
    try:
        return ssl.create_default_context(
            cafile=None if folder else verify, capath=verify if folder else None
        )
    except (ssl.SSLError, OSError) as exc:
        if isinstance(exc, ssl.SSLError) and exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            problem = "it holds no PEM certificate"
        elif isinstance(exc, FileNotFoundError):
            problem = "it does not exist"
        elif isinstance(exc, PermissionError):
            problem = "it cannot be read by this user"
        else:
            problem = f"it cannot be loaded ({shortened(str(exc))})"
        source = (
            f"the Verify TLS field (extra 'verify') of connection '{settings.conn_id}'"
            if verify == settings.verify
            else "REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE"
        )
        raise MLServerTLSError(
            f"The CA bundle {verify}, from {source}, cannot check the TLS certificate of {settings.base_url}: "
            f"{problem}. Give the path of a PEM file of the CA certificates that issued the server's certificate, "
            "readable on every worker and the triggerer."
        ) from None


_unverified_warned: set[tuple[str, str]] = set()
_unverified_lock = threading.Lock()


def unverified(settings: ConnectionSettings, verify: bool | str, log: logging.Logger | Any) -> None:
    """With Verify TLS false for an https server: one warning of ours per process and connection, naming it.

    urllib3's ``InsecureRequestWarning``, which it would issue for every request, is silenced for that server's
    host only (a filter on its message), so that a task's log does not fill with it. The filter is set again for
    each new session, since a test harness or a task runner may reset the warning filters between sessions.
    """
    if verify is not False or not settings.base_url.startswith("https:"):
        return
    from urllib3.exceptions import InsecureRequestWarning  # urllib3 comes with requests, the sync driver's

    host = urllib.parse.urlsplit(settings.base_url).hostname or ""
    warnings.filterwarnings(
        "ignore",
        message=rf"Unverified HTTPS request is being made to host '\[?{re.escape(host)}\]?'",
        category=InsecureRequestWarning,
    )
    with _unverified_lock:
        if (settings.conn_id, settings.base_url) in _unverified_warned:
            return
        _unverified_warned.add((settings.conn_id, settings.base_url))
    log.warning(  # two lines, each short enough to read in a task's log
        "Connection '%s' has Verify TLS false: the TLS certificate of %s is not checked (said once per process)",
        settings.conn_id,
        settings.base_url,
    )
    log.warning(
        "Whoever can intercept the traffic could read the password and tokens: set Verify TLS (extra 'verify') "
        "to the path of the CA bundle that issued the server's certificate"
    )
