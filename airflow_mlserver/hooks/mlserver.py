"""The hook: every call of the Machine Learning Server API, sync (requests) and async (aiohttp).

How the two sides share one implementation: each call is a *flow*, a generator that yields the HTTP
requests it needs (:class:`_Wire`) and receives their answers. The flows hold every rule - request
building, authentication, token refresh, the 401 retry, error mapping, answer parsing, the reconciliation
of an ambiguous batch start. Two small drivers run flows: :meth:`MLServerHook._run` sends with ``requests``
and :meth:`MLServerHook._arun` with ``aiohttp``; they only move bytes, under one tenacity retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import json
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import requests
import tenacity
from airflow.exceptions import AirflowException
from airflow.sdk import BaseHook

from airflow_mlserver.exceptions import (
    AmbiguousStartError,
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    MalformedResponseError,
    MLServerApiError,
    MLServerAuthError,
    MLServerConfigError,
    MLServerConnectionError,
    MLServerError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.models import (
    BatchStatus,
    ParameterDefinition,
    RecordResult,
    TokenInfo,
    WebService,
    start_answer_execution_id,
)
from airflow_mlserver.streaming import BatchAnswerParser, BatchReader, ErrorBodyReader, JsonReader

if TYPE_CHECKING:
    # pandas (behind the records module) is imported only where records are prepared: a trigger imports
    # this module inside the triggerer's event loop, where a slow import would block every other trigger.
    import aiohttp
    from airflow.sdk import Connection

    from airflow_mlserver.records import ExtraColumns, RecordsInput

T = TypeVar("T")

# Tokens are shared by every hook of the same connection in a process: a triggerer running hundreds of
# triggers logs in once per connection, not once per trigger. That also keeps the secrets masker small: each
# new secret recompiles its pattern of every secret, which hundreds of logins would make very costly.
_TOKENS: dict[tuple[str, str, str, str], TokenInfo] = {}
_SYNC_LOGIN_LOCKS: dict[tuple[str, str, str, str], threading.Lock] = {}
_ASYNC_LOGIN_LOCKS: dict[tuple[int, tuple[str, str, str, str]], asyncio.Lock] = {}

DEFAULT_PORT = 12800
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 8
MAX_PARALLEL_COUNT = 100
#: Statuses worth retrying: the server (or a gateway) is overloaded or restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Of those, the ones that say the request was not processed, so even a non-idempotent call may be resent.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
#: Longest ``Retry-After`` honoured; a longer one is cut to this.
MAX_RETRY_AFTER = 120.0
CHUNK_SIZE = 64 * 1024

_TRUE_TEXT = ("true", "1", "yes", "on")
_FALSE_TEXT = ("false", "0", "no", "off")


# --- connection settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook needs from an Airflow connection, checked; secrets stay out of ``repr``.

    :param conn_id: The Airflow connection id (for messages).
    :param base_url: ``scheme://host:port[/path]`` of the server, without a trailing slash.
    :param login: The user name to log in with, if any.
    :param password: The password (or, without a login, a bearer token).
    :param access_token: A bearer token given instead of credentials.
    :param verify: TLS verification: True, False or a CA bundle path.
    :param timeout: Seconds to wait for an answer (connecting takes at most 10 s of it).
    :param max_retries: Retries of a failed request before giving up.
    """

    conn_id: str
    base_url: str
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES

    @property
    def bearer_token(self) -> str | None:
        """The fixed token to send, when the connection gives one instead of a login."""
        if self.access_token:
            return self.access_token
        if not self.login and self.password:
            return self.password
        return None

    @classmethod
    def from_connection(cls, conn: Connection, extras: Mapping[str, Any]) -> ConnectionSettings:
        """Read and check the fields of ``conn``; raise :class:`MLServerConfigError` naming the bad one."""
        conn_id = conn.conn_id
        scheme = _scheme_of_conn_type(conn_id, conn.conn_type)
        schema = (conn.schema or "").strip().lower()
        if schema:
            if schema not in ("http", "https"):
                raise MLServerConfigError(
                    f"Connection '{conn_id}': schema {conn.schema!r} is not a URL scheme; set it to 'http' or "
                    "'https', or leave it empty."
                )
            scheme = _agree(conn_id, scheme, schema, "schema")
        host = (conn.host or "").strip()
        if not host:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has no host: set it to the server's address, e.g. 'localhost' or "
                "'https://mlserver.example.com'."
            )
        with_scheme = "://" in host
        try:
            parsed = urllib.parse.urlsplit(host if with_scheme else f"//{host}")
            hostname, host_port = parsed.hostname, parsed.port
        except ValueError as exc:
            raise MLServerConfigError(
                f"Connection '{conn_id}': host {host!r} is not valid ({exc})."
            ) from None
        if with_scheme and parsed.scheme.lower() not in ("http", "https"):
            raise MLServerConfigError(
                f"Connection '{conn_id}': host {host!r} is not an http(s) address; give a host name such as "
                "'localhost' or a URL such as 'https://mlserver.example.com'."
            )
        if not hostname or (not with_scheme and parsed.path not in ("", "/")):
            raise MLServerConfigError(
                f"Connection '{conn_id}': host {host!r} is not valid; give a host name such as 'localhost', "
                "or a URL such as 'https://mlserver.example.com/base'."
            )
        path = parsed.path.rstrip("/") if with_scheme else ""
        if with_scheme:
            scheme = _agree(conn_id, scheme, parsed.scheme.lower(), "host")
        port = conn.port or host_port
        if port is not None and not 0 < int(port) < 65536:
            raise MLServerConfigError(f"Connection '{conn_id}': port {port} is out of range (1 to 65535).")
        scheme = scheme or "http"
        if port is None:
            port = DEFAULT_PORT if scheme == "http" else 443
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"  # IPv6 literal
        base_url = f"{scheme}://{hostname}:{port}{path}"
        access_token = extras.get("access_token") or None
        if access_token is not None and not isinstance(access_token, str):
            raise MLServerConfigError(f"Connection '{conn_id}': extra 'access_token' must be a string.")
        if not access_token and not conn.password:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has no credentials: set login and password, or a bearer token in the "
                "'access_token' extra (or in the password, with no login)."
            )
        if conn.login and not conn.password and not access_token:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has login {conn.login!r} but no password: set the password."
            )
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            login=conn.login or None,
            password=conn.password or None,
            access_token=access_token,
            verify=_verify(conn_id, extras.get("verify", True)),
            timeout=_positive(conn_id, "timeout", extras.get("timeout", DEFAULT_TIMEOUT), float),
            max_retries=int(
                _positive(conn_id, "max_retries", extras.get("max_retries", DEFAULT_MAX_RETRIES), int, 0)
            ),
        )


def _scheme_of_conn_type(conn_id: str, conn_type: str | None) -> str | None:
    """``mlserver`` -> no preference; ``mlserver+https`` (a URI ``mlserver+https://...``) -> https."""
    kind = (conn_type or "mlserver").lower().replace("-", "_")
    if kind == "mlserver":
        return None
    for sep in ("+", "_"):
        base, _, scheme = kind.partition(sep)
        if base == "mlserver" and scheme in ("http", "https"):
            return scheme
    raise MLServerConfigError(
        f"Connection '{conn_id}' has type {conn_type!r}: use 'mlserver' (URI mlserver://...) or "
        "'mlserver+https' (URI mlserver+https://...)."
    )


def _agree(conn_id: str, current: str | None, new: str, where: str) -> str:
    if current is not None and current != new:
        raise MLServerConfigError(
            f"Connection '{conn_id}': the {where} says {new} but the connection type or schema says {current}; "
            "make them agree."
        )
    return new


def _verify(conn_id: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _TRUE_TEXT:
            return True
        if text.lower() in _FALSE_TEXT:
            return False
        if os.path.exists(text):
            return text
        raise MLServerConfigError(
            f"Connection '{conn_id}': extra 'verify' is {value!r}, which is neither true/false nor an existing CA "
            "bundle file."
        )
    raise MLServerConfigError(
        f"Connection '{conn_id}': extra 'verify' must be true, false or a CA bundle path, not {value!r}."
    )


def _positive(conn_id: str, name: str, value: Any, kind: type, minimum: float = 0) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or (minimum == 0 and kind is float and number <= 0):
        what = "a positive number of seconds" if kind is float else "a whole number of at least 0"
        raise MLServerConfigError(f"Connection '{conn_id}': extra '{name}' must be {what}, not {value!r}.")
    return float(number)


# --- requests as data --------------------------------------------------------------------------------------

ReadMode = Literal["json", "batch_head", "batch_full", "stream"]
Scope = Literal["service", "execution", "artifact", "none"]


@dataclass(frozen=True)
class _Spec:
    """One logical API request: what to send, how to read the answer and how to explain its errors."""

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

    def reader(self) -> JsonReader | BatchReader | None:
        label = f"{self.method} {self.path}"
        if self.read == "json":
            return JsonReader(label)
        if self.read in ("batch_head", "batch_full"):
            return BatchReader(label, head_only=self.read == "batch_head")
        return None


@dataclass(frozen=True)
class _Wire:
    """A request ready to send: the spec plus the headers of this attempt (the token is not in ``repr``)."""

    spec: _Spec
    headers: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class _Sleep:
    """A pause a flow asks for (the async driver must not block the loop)."""

    seconds: float


@dataclass
class _Answer:
    """An answer: status and headers, the parsed body (or a live streamed response)."""

    status: int
    headers: Mapping[str, str]
    value: Any = None
    error_message: str = ""
    stream: requests.Response | None = None


class _Transient(Exception):
    """A failure worth retrying; ``sent`` tells whether the server may have acted on the request."""

    def __init__(
        self, reason: str, sent: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.status = status
        self.retry_after = retry_after


class _AmbiguousSend(Exception):
    """A non-idempotent request failed after it may have reached the server (handled by its flow)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Flow = Generator["_Wire | _Sleep", "_Answer | None", T]


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _retry_after(value: str | None) -> float | None:
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


def _exception_failure(exc: BaseException) -> _Transient | None:
    """Classify a transport exception of either library: retryable or not, and possibly sent or not."""
    import aiohttp

    if isinstance(exc, requests.exceptions.ConnectTimeout | aiohttp.ClientConnectorError):
        return _Transient(f"cannot connect ({exc})", sent=False)
    if isinstance(exc, requests.exceptions.ConnectionError):
        chain = repr(exc)
        sent = not ("NewConnectionError" in chain or "ConnectionRefusedError" in chain)
        return _Transient(f"connection failed ({exc})", sent=sent)
    if isinstance(exc, requests.exceptions.Timeout | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return _Transient(f"no answer in time ({type(exc).__name__})", sent=True)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | aiohttp.ClientPayloadError):
        return _Transient(f"the answer was cut off ({exc})", sent=True)
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return _Transient(f"connection failed ({type(exc).__name__}: {exc})", sent=True)
    return None


class _Backoff(tenacity.wait.wait_base):
    """Exponential backoff with jitter, or the server's ``Retry-After`` when it gives one."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.maximum = maximum
        self.exponential = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self.exponential(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER) + wait * 0.1
        return wait


# --- the hook ----------------------------------------------------------------------------------------------


class MLServerHook(BaseHook):
    """Talk to a Machine Learning Server (or the local, wire-compatible one): services, consume and batch.

    The connection (type ``mlserver``) gives the address and credentials. URIs:
    ``mlserver://admin:pw@localhost:12800`` (http) and ``mlserver+https://admin:pw@host`` (https);
    the host may also be a URL (``https://host/base``) and the schema field ``http`` or ``https``. Without a
    port, http uses 12800 (the one-box default) and https 443. Log in with login and password, or give a
    bearer token in the ``access_token`` extra (or in the password, with no login). Extras: ``verify``
    (true, false or a CA bundle path), ``timeout`` (seconds), ``max_retries``.

    Tokens are renewed before they expire (``POST /login/refreshToken``, else a new login); a 401 triggers
    one re-authentication and a retry. Connection errors, timeouts, 429 (after ``Retry-After``),
    502, 503 and 504 are retried with exponential backoff and jitter when the call is idempotent; starting a
    batch is not, and is reconciled against the service's executions instead (see :meth:`start_batch`).
    Password and tokens are registered with Airflow's secrets masker and never logged.

    :param mlserver_conn_id: The Airflow connection id.
    :param timeout: Overrides the connection's ``timeout`` extra.
    :param max_retries: Overrides the connection's ``max_retries`` extra.
    :param retry_wait: First backoff wait in seconds (doubles each retry, plus up to as much jitter).
    :param retry_wait_max: Longest backoff wait in seconds.
    """

    conn_name_attr = "mlserver_conn_id"
    default_conn_name = "mlserver_default"
    conn_type = "mlserver"
    hook_name = "Machine Learning Server"

    def __init__(
        self,
        mlserver_conn_id: str = default_conn_name,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_wait: float = 1.0,
        retry_wait_max: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlserver_conn_id = mlserver_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_wait = retry_wait
        self.retry_wait_max = retry_wait_max
        self._settings: ConnectionSettings | None = None
        self._session: requests.Session | None = None
        self._token: TokenInfo | None = None
        self._to_mask: list[str] = []
        self._asession: aiohttp.ClientSession | None = None
        self._asession_loop: asyncio.AbstractEventLoop | None = None
        #: Bytes of answer bodies read so far (for benchmarks and tests of polling cost).
        self.bytes_received = 0

    # -- Airflow UI --------------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Labels and hints of the connection form."""
        return {
            "hidden_fields": [],
            "relabeling": {
                "host": "Host or URL",
                "schema": "Scheme (http or https)",
                "login": "Username",
                "password": "Password (or bearer token when no username)",
            },
            "placeholders": {
                "host": "localhost or https://mlserver.example.com",
                "schema": "http",
                "port": str(DEFAULT_PORT),
                "login": "admin",
                "extra": json.dumps(
                    {"verify": True, "timeout": DEFAULT_TIMEOUT, "max_retries": DEFAULT_MAX_RETRIES}
                ),
            },
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields of the connection form; empty when the web UI packages are not installed."""
        try:
            from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import IntegerField, PasswordField, StringField
            from wtforms.validators import NumberRange, Optional
        except ImportError:
            return {}
        return {
            "verify": StringField(
                lazy_gettext("Verify TLS (true, false or CA bundle path)"),
                widget=BS3TextFieldWidget(),
                default="true",
            ),
            "timeout": StringField(lazy_gettext("Timeout (seconds)"), widget=BS3TextFieldWidget()),
            "access_token": PasswordField(lazy_gettext("Access token"), widget=BS3PasswordFieldWidget()),
            "max_retries": IntegerField(
                lazy_gettext("Max retries"),
                validators=[Optional(), NumberRange(min=0)],
                widget=BS3TextFieldWidget(),
            ),
        }

    # -- connection ----------------------------------------------------------------------------------------

    def _apply_overrides(self, settings: ConnectionSettings) -> ConnectionSettings:
        changes: dict[str, Any] = {}
        if self.timeout is not None:
            changes["timeout"] = _positive(settings.conn_id, "timeout", self.timeout, float)
        if self.max_retries is not None:
            changes["max_retries"] = int(_positive(settings.conn_id, "max_retries", self.max_retries, int, 0))
        if not changes:
            return settings
        return ConnectionSettings(**{**settings.__dict__, **changes})

    def _remember_secrets(self, settings: ConnectionSettings) -> None:
        self._to_mask.extend(s for s in (settings.password, settings.access_token) if s)

    @property
    def settings(self) -> ConnectionSettings:
        """The checked connection settings (read once, from the sync connection API)."""
        if self._settings is None:
            conn = self.get_connection(self.mlserver_conn_id)
            settings = self._apply_overrides(ConnectionSettings.from_connection(conn, conn.extra_dejson))
            self._remember_secrets(settings)
            self._flush_masks()
            self._settings = settings
        return self._settings

    @property
    def _conf(self) -> ConnectionSettings:
        """The settings inside a flow: the driver has loaded them (sync or async) before the flow starts."""
        assert self._settings is not None, "flows run only through _run or _arun"
        return self._settings

    async def _asettings(self) -> ConnectionSettings:
        if self._settings is None:
            conn = await self.aget_connection(self.mlserver_conn_id)
            extras = await conn.aextra_dejson()
            settings = self._apply_overrides(ConnectionSettings.from_connection(conn, extras))
            self._remember_secrets(settings)
            await self._aflush_masks()
            self._settings = settings
        return self._settings

    def get_conn(self) -> requests.Session:
        """The ``requests`` session calls go through (TLS settings applied)."""
        if self._session is None:
            session = requests.Session()
            session.verify = self.settings.verify
            session.headers["Accept"] = "application/json"
            self._session = session
        return self._session

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    async def aclose(self) -> None:
        """Close the async side's HTTP session (a trigger calls this when it ends)."""
        if self._asession is not None and not self._asession.closed:
            await self._asession.close()
        self._asession = None

    def test_connection(self) -> tuple[bool, str]:
        """Log in and ask ``GET /status`` (or list the services); answer success and a message for the UI."""
        try:
            return True, self._run(self._flow_test_connection())
        except AirflowException as exc:
            return False, str(exc)

    def _flow_test_connection(self) -> Flow[str]:
        settings = self._conf
        try:
            answer = yield from self._exchange(_Spec("GET", "/status", "ask the server's status"))
            detail = (
                answer.value.get("statusCode", "unknown") if isinstance(answer.value, dict) else "unknown"
            )
            summary = f"status {detail}"
        except MLServerApiError as exc:
            if exc.status != 404:
                raise
            services = yield from self._flow_list_services()
            summary = f"{len(services)} web services published"
        who = (
            f"as '{settings.login}'"
            if settings.login and not settings.bearer_token
            else "with a bearer token"
        )
        return f"Connected to the Machine Learning Server at {settings.base_url} {who}: {summary}."

    # -- secrets -------------------------------------------------------------------------------------------

    def _new_masks(self) -> list[str]:
        # Handed over every time: the masker may have been reset since (a new task run in this process); a
        # secret it already knows costs a set lookup there.
        fresh = list(dict.fromkeys(self._to_mask))
        self._to_mask.clear()
        return fresh

    def _flush_masks(self) -> None:
        from airflow.sdk.log import mask_secret

        for value in self._new_masks():
            mask_secret(value)

    async def _aflush_masks(self) -> None:
        from airflow.sdk.log import amask_secret

        for value in self._new_masks():
            await amask_secret(value)

    def _token_key(self) -> tuple[str, str, str, str]:
        """Whose token: the same server, user and password (a changed password must log in again)."""
        import hashlib

        settings = self._settings
        assert settings is not None
        secret = hashlib.sha256((settings.password or "").encode()).hexdigest()
        return (settings.conn_id, settings.base_url, settings.login or "", secret)

    # -- authentication (one rule set for both sides) -----------------------------------------------------

    def _authenticate(self, force: bool = False) -> Flow[None]:
        """Make sure a valid token is at hand: log in, or refresh ahead of expiry, or after a 401 (``force``)."""
        settings = self._conf
        if settings.bearer_token:
            return
        shared = _TOKENS.get(self._token_key())
        if force and shared is not None and shared is self._token:
            del _TOKENS[self._token_key()]  # refused by the server: no other hook should use it either
        elif shared is not None and (
            self._token is None or (self._token.refresh_due() and not shared.refresh_due())
        ):
            self._token = shared  # another hook of this connection already logged in or refreshed
            self._to_mask.extend(t for t in (shared.access_token, shared.refresh_token) if t)
        token = self._token
        if token is not None and not force and not token.refresh_due():
            return
        if token is not None and token.refresh_token:
            body = json.dumps({"refreshToken": token.refresh_token}).encode()
            spec = _Spec(
                "POST", "/login/refreshToken", "refresh the access token", body=body, authenticated=False
            )
            answer = yield _Wire(spec, {"Content-Type": "application/json"})
            if answer is not None and answer.status == 200:
                self._accept_token(answer.value)
                return
            self.log.debug(
                "Refreshing the access token failed (HTTP %s); logging in again", answer and answer.status
            )
        self._token = None
        body = json.dumps({"username": settings.login, "password": settings.password}).encode()
        spec = _Spec("POST", "/login", "log in", body=body, authenticated=False)
        answer = yield _Wire(spec, {"Content-Type": "application/json"})
        assert answer is not None
        if answer.status in (400, 401, 403):
            raise MLServerAuthError(
                f"The server refused the login of user '{settings.login}' (POST /login answered {answer.status}: "
                f"{answer.error_message}). Check the login and password of connection '{settings.conn_id}'."
            )
        if answer.status >= 400:
            raise self._api_error(spec, answer)
        self._accept_token(answer.value)

    def _accept_token(self, value: Any) -> None:
        token = TokenInfo.from_api(value)
        self._token = token
        _TOKENS[self._token_key()] = token
        self._to_mask.extend(s for s in (token.access_token, token.refresh_token) if s)
        self.log.debug("Got an access token valid for %s s", token.lifetime)

    def _auth_headers(self) -> dict[str, str]:
        settings = self._settings
        assert settings is not None
        token = settings.bearer_token or (self._token.access_token if self._token else None)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _exchange(self, spec: _Spec) -> Flow[_Answer]:
        """Send ``spec`` authenticated; re-authenticate once on a 401; raise the API error of an error answer."""
        yield from self._authenticate()
        answer = yield self._wire(spec)
        assert answer is not None
        if answer.status == 401:
            settings = self._conf
            if settings.bearer_token:
                raise MLServerAuthError(
                    f"The server rejected the bearer token of connection '{settings.conn_id}' ({spec.method} "
                    f"{spec.path} answered 401: {answer.error_message}). Put a valid token in the connection "
                    "(extra 'access_token'), or give login and password so that the hook logs in itself."
                )
            self.log.info("The server answered 401 to %s %s; authenticating again", spec.method, spec.path)
            yield from self._authenticate(force=True)
            answer = yield self._wire(spec)
            assert answer is not None
            if answer.status == 401:
                raise MLServerAuthError(
                    f"The server answered 401 to {spec.method} {spec.path} even with a fresh token "
                    f"({answer.error_message}). Check that user '{settings.login}' may use this server."
                )
        if answer.status >= 400:
            raise self._api_error(spec, answer)
        return answer

    def _wire(self, spec: _Spec) -> _Wire:
        headers = {"Content-Type": "application/json"} if spec.body is not None else {}
        if spec.authenticated:
            headers.update(self._auth_headers())
        return _Wire(spec, headers)

    # -- error answers -------------------------------------------------------------------------------------

    def _api_error(self, spec: _Spec, answer: _Answer) -> MLServerApiError:
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
        return cls(
            f"Could not {spec.what} ({where}). {advice}".rstrip(), status, message, spec.method, spec.path
        )

    # -- the sync driver -----------------------------------------------------------------------------------

    def _retry_policy(self, wire: _Wire) -> dict[str, Any]:
        """The tenacity arguments both drivers retry with."""
        settings = self._conf
        spec = wire.spec

        def log_retry(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            self.log.warning(
                "%s %s failed (%s); retry %d of %d in %.1f s",
                spec.method,
                spec.path,
                exc,
                state.attempt_number,
                settings.max_retries,
                wait,
            )

        return {
            "stop": tenacity.stop_after_attempt(settings.max_retries + 1),
            "wait": _Backoff(self.retry_wait, self.retry_wait_max),
            "retry": tenacity.retry_if_exception_type(_Transient),
            "before_sleep": log_retry,
            "reraise": True,
        }

    def _final_error(self, wire: _Wire, exc: _Transient) -> MLServerError:
        settings = self._conf
        spec = wire.spec
        attempts = settings.max_retries + 1
        if exc.status is not None:
            return MLServerApiError(
                f"Could not {spec.what}: {spec.method} {spec.path} answered {exc.status} ({exc.reason}) to all "
                f"{attempts} attempts. The server is overloaded or unavailable: retry later, or raise the "
                f"connection's max_retries.",
                exc.status,
                exc.reason,
                spec.method,
                spec.path,
            )
        return MLServerConnectionError(
            f"Could not {spec.what}: {spec.method} {spec.path} at {settings.base_url} failed {attempts} times, "
            f"last: {exc.reason}. Check that the server runs and that the host and port of connection "
            f"'{settings.conn_id}' are right."
        )

    def _check_answer_status(
        self, wire: _Wire, status: int, headers: Mapping[str, str], message: str
    ) -> None:
        """Raise :class:`_Transient` (or :class:`_AmbiguousSend`) for a status worth retrying."""
        if status not in RETRY_STATUSES:
            return
        if not wire.spec.idempotent and status not in NOT_PROCESSED_STATUSES:
            raise _AmbiguousSend(f"HTTP {status}: {message}")
        raise _Transient(
            f"HTTP {status}: {message}",
            sent=True,
            status=status,
            retry_after=_retry_after(headers.get("Retry-After")),
        )

    @contextlib.contextmanager
    def _classified(self, wire: _Wire) -> Iterator[None]:
        """Turn a transport failure into its retry class (one rule, for both the sync and the async driver)."""
        try:
            yield
        except (_Transient, _AmbiguousSend, MLServerError):
            raise
        except Exception as exc:
            classified = self._classify(wire, exc)
            if classified is exc:
                raise
            raise classified from exc

    def _classify(self, wire: _Wire, exc: BaseException) -> BaseException:
        failure = _exception_failure(exc)
        if failure is None:
            return exc
        if failure.sent and not wire.spec.idempotent:
            return _AmbiguousSend(failure.reason)
        return failure

    def _send(self, wire: _Wire) -> _Answer:
        """Send one request with ``requests`` under the retry policy; read its answer as the spec says."""
        try:
            answer: _Answer = tenacity.Retrying(**self._retry_policy(wire))(self._send_once, wire)
            return answer
        except _Transient as exc:
            raise self._final_error(wire, exc) from None

    def _send_once(self, wire: _Wire) -> _Answer:
        settings = self.settings
        spec = wire.spec
        started = time.monotonic()
        reader = spec.reader()
        response = None
        try:
            with self._classified(wire):
                response = self.get_conn().request(
                    spec.method,
                    settings.base_url + spec.path,
                    params=list(spec.params),
                    data=spec.body,
                    headers=dict(wire.headers),
                    timeout=(min(10.0, settings.timeout), settings.timeout),
                    stream=True,
                )
                status = response.status_code
                if status >= 400:
                    error = ErrorBodyReader()
                    for chunk in response.iter_content(CHUNK_SIZE):
                        if error.feed(chunk):
                            break
                    message = error.finish(True)
                    self.bytes_received += error.bytes_read
                    self._check_answer_status(wire, status, response.headers, message)
                    return _Answer(status, response.headers, error_message=message)
                if reader is None:
                    stream, response = response, None  # the caller reads and closes it
                    return _Answer(status, stream.headers, stream=stream)
                complete = True
                for chunk in response.iter_content(CHUNK_SIZE):
                    if reader.feed(chunk):
                        complete = False
                        break
                value = reader.finish(complete)
                self.bytes_received += reader.bytes_read
                self.log.debug(
                    "%s %s -> %d (%d bytes, %.0f ms)",
                    spec.method,
                    spec.path,
                    status,
                    reader.bytes_read,
                    (time.monotonic() - started) * 1000,
                )
                return _Answer(status, response.headers, value=value)
        finally:
            if response is not None:
                response.close()

    def _login_due(self) -> bool:
        """True when this call would have to log in or refresh (no usable token here or in the shared cache)."""
        settings = self._settings
        if settings is None or settings.bearer_token:
            return False
        shared = _TOKENS.get(self._token_key())
        token = self._token if self._token is not None and not self._token.refresh_due() else shared
        return token is None or token.refresh_due()

    def _run(self, flow: Flow[T]) -> T:
        """Run a flow with the sync transport."""
        self.settings  # noqa: B018 - load the connection before the flow needs it
        if self._login_due():
            # one login at a time per connection: threads that wait adopt the token the first one got
            with _SYNC_LOGIN_LOCKS.setdefault(self._token_key(), threading.Lock()):
                self._drive(self._authenticate())
        return self._drive(flow)

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                self._flush_masks()
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    answer = self._send(step)
                except _AmbiguousSend as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(answer)
        except StopIteration as stop:
            self._flush_masks()
            return stop.value  # type: ignore[no-any-return]

    # -- the async driver ----------------------------------------------------------------------------------

    async def _arun(self, flow: Flow[T]) -> T:
        """Run a flow with aiohttp; nothing here blocks the event loop."""
        import aiohttp

        settings = await self._asettings()
        session = self._asession
        if session is None or session.closed or self._asession_loop is not asyncio.get_running_loop():
            ssl: Any = None
            if settings.verify is False:
                ssl = False
            elif isinstance(settings.verify, str):
                import ssl as ssl_module

                ssl = await asyncio.to_thread(ssl_module.create_default_context, cafile=settings.verify)
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, settings.timeout), sock_read=settings.timeout
            )
            # kept for the next call: a trigger polling every few seconds reuses its keep-alive connection
            session = aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(ssl=ssl),
                headers={"Accept": "application/json"},
            )
            self._asession, self._asession_loop = session, asyncio.get_running_loop()
        if self._login_due():
            # one login at a time per connection and event loop: hundreds of triggers starting together
            # would otherwise each log in (and each add new secrets to the masker)
            loop = asyncio.get_running_loop()
            lock = _ASYNC_LOGIN_LOCKS.setdefault((id(loop), self._token_key()), asyncio.Lock())
            async with lock:
                await self._adrive(session, self._authenticate())
        return await self._adrive(session, flow)

    async def _adrive(self, session: aiohttp.ClientSession, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                await self._aflush_masks()
                if isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    answer = await self._asend(session, step)
                except _AmbiguousSend as exc:
                    step = flow.throw(exc)
                    continue
                step = flow.send(answer)
        except StopIteration as stop:
            await self._aflush_masks()
            return stop.value  # type: ignore[no-any-return]

    async def _asend(self, session: aiohttp.ClientSession, wire: _Wire) -> _Answer:
        try:
            retrying = tenacity.AsyncRetrying(**self._retry_policy(wire))
            answer: _Answer = await retrying(self._asend_once, session, wire)
            return answer
        except _Transient as exc:
            raise self._final_error(wire, exc) from None

    async def _asend_once(self, session: aiohttp.ClientSession, wire: _Wire) -> _Answer:
        settings = self._settings
        assert settings is not None
        spec = wire.spec
        reader = spec.reader()
        if reader is None:
            raise MLServerConfigError(
                f"{spec.method} {spec.path} streams its answer, which the async side does not do."
            )
        with self._classified(wire):
            async with session.request(
                spec.method,
                settings.base_url + spec.path,
                params=list(spec.params),
                data=spec.body,
                headers=dict(wire.headers),
            ) as response:
                status = response.status
                if status >= 400:
                    error = ErrorBodyReader()
                    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                        if error.feed(chunk):
                            break
                    message = error.finish(True)
                    self.bytes_received += error.bytes_read
                    self._check_answer_status(wire, status, response.headers, message)
                    return _Answer(status, dict(response.headers), error_message=message)
                complete = True
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    if reader.feed(chunk):
                        complete = False
                        response.close()  # stop reading: the rest is not needed
                        break
                value = reader.finish(complete)
                self.bytes_received += reader.bytes_read
                return _Answer(status, dict(response.headers), value=value)

    # -- web services --------------------------------------------------------------------------------------

    def _flow_list_services(self) -> Flow[list[WebService]]:
        answer = yield from self._exchange(_Spec("GET", "/services", "list the web services"))
        return [WebService.from_api(s) for s in _list(answer.value, "GET /services")]

    def list_services(self) -> list[WebService]:
        """Every published web service version."""
        return self._run(self._flow_list_services())

    def _flow_get_service(self, name: str, version: str | None) -> Flow[WebService]:
        if version is None:
            path, subject = f"/services/{_quote(name)}", f"Web service '{name}'"
        else:
            path, subject = (
                f"/services/{_quote(name)}/{_quote(version)}",
                f"Web service '{name}' version '{version}'",
            )
        spec = _Spec("GET", path, f"get web service '{name}'", scope="service", subject=subject)
        answer = yield from self._exchange(spec)
        value = answer.value
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ServiceNotFoundError(
                f"{subject} was not found (GET {path} answered an empty list). Check the name and version; "
                "list_services() shows what is published.",
                200,
                "",
                "GET",
                path,
            )
        return WebService.from_api(items[-1])  # versions come oldest first: the last is the latest

    def get_service(self, name: str, version: str | None = None) -> WebService:
        """One version of a web service; ``version=None`` means the latest published version."""
        return self._run(self._flow_get_service(name, version))

    def _flow_publish(
        self, name: str, version: str | None, body: dict[str, Any], replace: bool
    ) -> Flow[WebService]:
        data = json.dumps(body).encode()
        path = f"/services/{_quote(name)}" + (f"/{_quote(version)}" if version is not None else "")
        subject = f"Web service '{name}'" + (f" version '{version}'" if version is not None else "")
        spec = _Spec(
            "POST",
            path,
            f"publish {subject.lower()}",
            body=data,
            idempotent=False,
            scope="service",
            subject=subject,
        )
        try:
            answer = yield from self._exchange(spec)
            consume_path = answer.value if isinstance(answer.value, str) else ""
        except ServiceExistsError:
            if not replace or version is None:
                raise
            patch = _Spec(
                "PATCH", path, f"update {subject.lower()}", body=data, scope="service", subject=subject
            )
            answer = yield from self._exchange(patch)
            consume_path = answer.value if isinstance(answer.value, str) else ""
        except _AmbiguousSend as exc:
            if version is None:
                raise MLServerConnectionError(
                    f"Publishing a new version of web service '{name}' failed after the request was sent "
                    f"({exc.reason}); it may or may not exist now. Check list_services() before publishing again."
                ) from None
            self.log.warning(
                "Publishing %s failed ambiguously (%s); checking whether it exists", subject, exc.reason
            )
            consume_path = ""
        if version is None:
            version = consume_path.rstrip("/").rsplit("/", 1)[-1] if consume_path else None
            if not version:
                raise MalformedResponseError(
                    f"The server's answer to POST {path} does not name the new version: {answer.value!r}."
                )
        return (yield from self._flow_get_service(name, version))

    def publish_service(
        self,
        name: str,
        version: str | None,
        code: str,
        inputs: Mapping[str, str] | Sequence[ParameterDefinition] = (),
        outputs: Mapping[str, str] | Sequence[ParameterDefinition] = (),
        init_code: str | None = None,
        output_file_names: Sequence[str] = (),
        operation_id: str | None = None,
        description: str | None = None,
        runtime_type: str = "Python",
        snapshot_id: str | None = None,
        replace: bool = False,
    ) -> WebService:
        """Publish a web service (``version=None``: the server picks one); ``replace`` updates an existing one."""
        body: dict[str, Any] = {
            "code": code,
            "initCode": init_code,
            "runtimeType": runtime_type,
            "inputParameterDefinitions": [p.to_api() for p in _definitions(inputs)],
            "outputParameterDefinitions": [p.to_api() for p in _definitions(outputs)],
            "outputFileNames": list(output_file_names),
            "operationId": operation_id,
            "description": description,
            "snapshotId": snapshot_id,
        }
        return self._run(
            self._flow_publish(name, version, {k: v for k, v in body.items() if v is not None}, replace)
        )

    def _flow_delete_service(self, name: str, version: str, missing_ok: bool) -> Flow[bool]:
        path = f"/services/{_quote(name)}/{_quote(version)}"
        subject = f"Web service '{name}' version '{version}'"
        try:
            yield from self._exchange(
                _Spec("DELETE", path, f"delete {subject.lower()}", scope="service", subject=subject)
            )
        except ServiceNotFoundError:
            if missing_ok:
                return False
            raise
        return True

    def delete_service(self, name: str, version: str, missing_ok: bool = False) -> bool:
        """Delete a web service version; answer False when it was not there and ``missing_ok``."""
        return self._run(self._flow_delete_service(name, version, missing_ok))

    def get_swagger(self, name: str, version: str) -> dict[str, Any]:
        """The Swagger 2.0 document for consuming one service."""

        def flow() -> Flow[dict[str, Any]]:
            path = f"/api/{_quote(name)}/{_quote(version)}/swagger.json"
            subject = f"Web service '{name}' version '{version}'"
            answer = yield from self._exchange(
                _Spec("GET", path, "get the swagger document", scope="service", subject=subject)
            )
            return _object(answer.value, f"GET {path}")

        return self._run(flow())

    # -- request-response ----------------------------------------------------------------------------------

    def consume(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, Any],
        service: WebService | None = None,
        idempotent: bool = True,
    ) -> RecordResult:
        """Run the service once on ``inputs`` (checked and coerced first) and answer its result.

        A failure inside the service code is a result with ``success=False``, not an exception. Set
        ``idempotent=False`` for services with side effects: an ambiguous failure is then not resent.
        """

        def flow() -> Flow[RecordResult]:
            known = service or (yield from self._flow_get_service(name, version))
            from airflow_mlserver.records import prepare_inputs

            body = json.dumps(prepare_inputs(inputs, known)).encode()
            path = f"/api/{_quote(name)}/{_quote(version)}"
            spec = _Spec(
                "POST",
                path,
                f"consume web service '{name}' version '{version}'",
                body=body,
                idempotent=idempotent,
                scope="service",
                subject=f"Web service '{name}' version '{version}'",
            )
            try:
                answer = yield from self._exchange(spec)
            except _AmbiguousSend as exc:
                raise MLServerConnectionError(
                    f"Consuming web service '{name}' version '{version}' failed after the request was sent "
                    f"({exc.reason}); the service may have run. Call again if that is harmless."
                ) from None
            return RecordResult.from_api(answer.value)

        return self._run(flow())

    # -- batch ---------------------------------------------------------------------------------------------

    def _batch_path(self, name: str, version: str, execution_id: str | None = None) -> str:
        path = f"/api/{_quote(name)}/{_quote(version)}/batch"
        return path if execution_id is None else f"{path}/{_quote(execution_id)}"

    def _spec_list_executions(self, name: str, version: str) -> _Spec:
        return _Spec(
            "GET",
            self._batch_path(name, version),
            f"list the batch executions of web service '{name}' version '{version}'",
            scope="service",
            subject=f"Web service '{name}' version '{version}'",
        )

    def _flow_list_executions(self, name: str, version: str) -> Flow[list[str]]:
        spec = self._spec_list_executions(name, version)
        answer = yield from self._exchange(spec)
        ids = _list(answer.value, f"GET {spec.path}")
        if not all(isinstance(i, str) for i in ids):
            raise MalformedResponseError(
                f"The server's answer to GET {spec.path} is not a list of execution ids: {str(ids)[:200]}."
            )
        return ids

    def list_batch_executions(self, name: str, version: str) -> list[str]:
        """The ids of the service's batch executions."""
        return self._run(self._flow_list_executions(name, version))

    def _flow_start_batch(
        self,
        name: str,
        version: str,
        records: RecordsInput,
        parallel_count: int,
        service: WebService | None,
        extra_columns: ExtraColumns,
    ) -> Flow[str]:
        if (
            isinstance(parallel_count, bool)
            or not isinstance(parallel_count, int)
            or not 1 <= parallel_count <= MAX_PARALLEL_COUNT
        ):
            raise MLServerConfigError(
                f"parallel_count must be a whole number from 1 to {MAX_PARALLEL_COUNT} (the server's maximum "
                f"threads per batch execution), not {parallel_count!r}."
            )
        known = service or (yield from self._flow_get_service(name, version))
        from airflow_mlserver.records import prepare_records

        body = _encode_records(prepare_records(records, known, extra_columns))
        settings = self._conf
        before = set((yield from self._flow_list_executions(name, version)))
        spec = _Spec(
            "POST",
            self._batch_path(name, version),
            f"start a batch of web service '{name}' version '{version}'",
            params=(("parallelCount", str(parallel_count)),),
            body=body,
            idempotent=False,
            scope="service",
            subject=f"Web service '{name}' version '{version}'",
        )
        reason = ""
        for _ in range(settings.max_retries + 1):
            try:
                answer = yield from self._exchange(spec)
                return start_answer_execution_id(answer.value)
            except _AmbiguousSend as exc:
                reason = exc.reason
            # The server may or may not have started an execution: look before sending again.
            new: set[str] = set()
            for wait in (0.0, min(settings.timeout, 5.0)):
                if wait:
                    yield _Sleep(wait)
                new = set((yield from self._flow_list_executions(name, version))) - before
                if new:
                    break
            if len(new) == 1:
                adopted = new.pop()
                self.log.warning(
                    "Starting the batch failed after sending (%s); adopting execution %s, the one it created",
                    reason,
                    adopted,
                )
                return adopted
            if new:
                raise AmbiguousStartError(
                    f"Starting a batch of web service '{name}' version '{version}' failed after sending ({reason}), "
                    f"and meanwhile {len(new)} executions appeared ({', '.join(sorted(new))}): cannot tell "
                    "which is this one. Check them with get_batch() and cancel the ones not wanted.",
                    tuple(sorted(new)),
                )
            self.log.warning(
                "Starting the batch failed before the server acted on it (%s); sending it again", reason
            )
        raise AmbiguousStartError(
            f"Starting a batch of web service '{name}' version '{version}' kept failing ({reason}); no execution was "
            "created. Retry later."
        )

    def start_batch(
        self,
        name: str,
        version: str,
        records: RecordsInput,
        parallel_count: int = 10,
        service: WebService | None = None,
        extra_columns: ExtraColumns = "error",
    ) -> str:
        """Check the records against the service's inputs, start a batch execution and answer its id.

        Starting is not idempotent, so it is never blindly resent: after a failure that leaves unknown whether
        the server acted, the service's execution ids are compared with those from before; a single new one
        is adopted, none means it is safe to send again, several raise :class:`AmbiguousStartError`.

        :param records: A DataFrame, a list of dicts or a dict of columns (see :mod:`airflow_mlserver.records`).
        :param parallel_count: Records run at a time on the server (1 to 100).
        :param service: The service's description, if already fetched (saves a request).
        :param extra_columns: ``"error"`` or ``"drop"`` for columns the service does not declare.
        """
        return self._run(
            self._flow_start_batch(name, version, records, parallel_count, service, extra_columns)
        )

    def _spec_batch(self, name: str, version: str, execution_id: str, partial: bool, read: ReadMode) -> _Spec:
        return _Spec(
            "GET",
            self._batch_path(name, version, execution_id),
            f"get batch execution '{execution_id}'",
            params=(("showPartialResults", "true" if partial else "false"),),
            read=read,
            scope="execution",
            subject=f"Batch execution '{execution_id}' of web service '{name}' version '{version}'",
        )

    def _flow_get_batch(self, name: str, version: str, execution_id: str, partial: bool) -> Flow[BatchStatus]:
        _check_execution_id(execution_id)
        spec = self._spec_batch(
            name, version, execution_id, partial, "batch_full" if partial else "batch_head"
        )
        answer = yield from self._exchange(spec)
        head, raw_results = answer.value
        results = (
            None
            if raw_results is None
            else tuple(RecordResult.from_api(r, i) for i, r in enumerate(raw_results))
        )
        return BatchStatus.from_api(head, execution_id, name, version, results)

    def get_batch(self, name: str, version: str, execution_id: str, partial: bool = False) -> BatchStatus:
        """State and counts of an execution; with ``partial=True`` also the results finished so far.

        Without ``partial`` this is a cheap status poll: only the head of the answer is read, whatever the
        batch size (the server sends the whole results list once the execution has finished).
        """
        return self._run(self._flow_get_batch(name, version, execution_id, partial))

    async def async_get_batch(
        self, name: str, version: str, execution_id: str, partial: bool = False
    ) -> BatchStatus:
        """:meth:`get_batch` for triggers: same rules, on aiohttp."""
        return await self._arun(self._flow_get_batch(name, version, execution_id, partial))

    def _flow_cancel_batch(self, name: str, version: str, execution_id: str) -> Flow[BatchStatus]:
        _check_execution_id(execution_id)
        spec = _Spec(
            "DELETE",
            self._batch_path(name, version, execution_id),
            f"cancel batch execution '{execution_id}'",
            scope="execution",
            subject=f"Batch execution '{execution_id}' of web service '{name}' version '{version}'",
        )
        answer = yield from self._exchange(spec)
        if isinstance(answer.value, dict) and "state" in answer.value:
            return BatchStatus.from_api(answer.value, execution_id, name, version)
        return (yield from self._flow_get_batch(name, version, execution_id, False))

    def cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """Cancel an execution (records already running finish); answer its status after the cancel."""
        return self._run(self._flow_cancel_batch(name, version, execution_id))

    async def async_cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """:meth:`cancel_batch` for triggers: same rules, on aiohttp."""
        return await self._arun(self._flow_cancel_batch(name, version, execution_id))

    def iter_batch_results(self, name: str, version: str, execution_id: str) -> Iterator[RecordResult]:
        """The execution's results, decoded one at a time as they stream in (memory bounded by one result).

        On an unfinished execution these are the results finished so far. If the stream breaks off, a
        finished execution's results are requested again and the ones already yielded are skipped.
        """
        _check_execution_id(execution_id)
        spec = self._spec_batch(name, version, execution_id, True, "stream")
        settings = self.settings
        yielded = 0
        failures = 0
        while True:
            answer = self._run(self._exchange(spec))
            response = answer.stream
            assert response is not None
            parser = BatchAnswerParser(f"GET {spec.path}", skip=yielded)
            try:
                try:
                    for chunk in response.iter_content(CHUNK_SIZE):
                        for item in parser.feed(chunk):
                            yield RecordResult.from_api(item, yielded)
                            yielded += 1
                    for item in parser.close():
                        yield RecordResult.from_api(item, yielded)
                        yielded += 1
                    return
                finally:
                    self.bytes_received += parser.bytes_read
                    response.close()
            except (requests.exceptions.RequestException, ConnectionError) as exc:
                finished = BatchStatus.from_api(
                    {"state": "running", "totalItemCount": 0, "completedItemCount": 0, **parser.head}
                ).is_finished
                failures += 1
                if (yielded and not finished) or failures > settings.max_retries:
                    raise MLServerConnectionError(
                        f"Reading the results of batch execution '{execution_id}' broke off after {yielded} results "
                        f"({exc}). Read them again once the execution has finished."
                    ) from None
                self.log.warning("Reading results broke off after %d results (%s); resuming", yielded, exc)

    def _flow_list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> Flow[list[str]]:
        _check_execution_id(execution_id)
        _check_index(index)
        path = f"{self._batch_path(name, version, execution_id)}/{index}/files"
        spec = _Spec(
            "GET",
            path,
            f"list the artifacts of record {index}",
            scope="artifact",
            subject=f"Record {index} of batch execution '{execution_id}'",
        )
        answer = yield from self._exchange(spec)
        files = _list(answer.value, f"GET {path}")
        return [str(f) for f in files]

    def list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> list[str]:
        """The names of the files record ``index`` (0-based) produced."""
        return self._run(self._flow_list_artifacts(name, version, execution_id, index))

    def open_artifact(
        self, name: str, version: str, execution_id: str, index: int, file_name: str
    ) -> ArtifactReader:
        """A binary file object streaming one artifact from the server (close it, or use ``with``).

        Its ``size`` is the length the server announced, or None when the answer does not say.
        """
        _check_execution_id(execution_id)
        _check_index(index)
        if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise MLServerConfigError(
                f"Artifact name {file_name!r} is not a plain file name: give one from list_artifacts()."
            )
        path = f"{self._batch_path(name, version, execution_id)}/{index}/files/{_quote(file_name)}"
        spec = _Spec(
            "GET",
            path,
            f"read artifact '{file_name}'",
            read="stream",
            scope="artifact",
            subject=f"Artifact '{file_name}' of record {index} of batch execution '{execution_id}'",
        )
        answer = self._run(self._exchange(spec))
        assert answer.stream is not None
        reader = ArtifactReader(_ResponseStream(answer.stream, self), CHUNK_SIZE)
        reader.size = _announced_size(answer.stream.headers)
        return reader

    def download_artifact(
        self,
        name: str,
        version: str,
        execution_id: str,
        index: int,
        file_name: str,
        destination: str | os.PathLike[str],
    ) -> int:
        """Stream one artifact to a local file; answer the number of bytes written."""
        with (
            self.open_artifact(name, version, execution_id, index, file_name) as source,
            open(destination, "wb") as target,
        ):
            shutil.copyfileobj(source, target, CHUNK_SIZE)
            return target.tell()


class ArtifactReader(io.BufferedReader):
    """A buffered stream of one artifact; ``size`` is its length as the server announced it (or None)."""

    size: int | None = None


def _announced_size(headers: Mapping[str, str]) -> int | None:
    if headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        return None  # the length is of the encoded body, not of the file
    try:
        return int(headers["Content-Length"])
    except (KeyError, TypeError, ValueError):
        return None


class _ResponseStream(io.RawIOBase):
    """A raw binary stream over a streamed ``requests`` answer (decoded, never loaded whole)."""

    def __init__(self, response: requests.Response, hook: MLServerHook) -> None:
        self._response = response
        self._raw = response.raw
        self._raw.decode_content = True
        self._hook = hook

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except Exception as exc:
            raise MLServerConnectionError(f"Reading an artifact broke off ({exc}); open it again.") from None
        n = len(data)
        buffer[:n] = data
        self._hook.bytes_received += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


def _definitions(value: Mapping[str, str] | Sequence[ParameterDefinition]) -> list[ParameterDefinition]:
    if isinstance(value, Mapping):
        return [ParameterDefinition(name, kind) for name, kind in value.items()]
    return list(value)


def _encode_records(records: list[dict[str, Any]]) -> bytes:
    try:
        return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        from airflow_mlserver.exceptions import RecordValidationError

        raise RecordValidationError(f"The records cannot be sent as JSON: {exc}.") from None


def _check_execution_id(execution_id: str) -> None:
    if not isinstance(execution_id, str) or not execution_id.strip():
        raise MLServerConfigError(
            f"Batch execution id must be a non-empty string, not {execution_id!r}: use the id start_batch() answered."
        )


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise MLServerConfigError(
            f"Record index must be a whole number of at least 0 (indexes count from 0), not {index!r}."
        )


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedResponseError(
            f"The server's answer to {what} is a {type(value).__name__}, not a list: {str(value)[:200]!r}. The server "
            "does not follow the Machine Learning Server API."
        )
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponseError(
            f"The server's answer to {what} is a {type(value).__name__}, not an object: {str(value)[:200]!r}. The "
            "server does not follow the Machine Learning Server API."
        )
    return value


__all__ = ["ConnectionSettings", "MLServerHook"]
