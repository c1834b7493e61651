"""Authentication: the token cache, login and refresh ahead of expiry, and one re-login on a 401.

Calls of one client that are answered 401 together (a server that forgot its tokens, polled by a thousand
triggers sharing one client) renew the token once: the first renews, the others wait for it in short sleeps
and resend with its token (:meth:`Auth.renew`).

Tokens are shared by every client of the same server, user and password in a process: a triggerer running
hundreds of triggers logs in once per connection, not once per trigger. That also keeps a secrets masker
small (each new secret recompiles its pattern of every secret). Login is single-flight: the drivers hold
:meth:`Auth.sync_lock` or :meth:`Auth.async_lock` while they log in, and whoever waited adopts the token.

An asyncio lock belongs to one event loop, so the async locks are kept per loop, keyed by the loop object
itself (never its ``id``, which a later loop may reuse) in a :class:`weakref.WeakKeyDictionary`, and only while a
coroutine holds or awaits one: the last to leave drops its entry, and its loop's once it has none left. A
lock that was waited on refers to its loop, so keeping it longer would keep the loop alive too; a closed loop
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from airflow_mlserver.client.errors import MLServerApiError, MLServerAuthError
from airflow_mlserver.client.models import TokenInfo
from airflow_mlserver.client.protocol import Answer, Flow, Sleep, Spec, Wire, api_error
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.settings import ConnectionSettings

TokenKey = tuple[str, str, str, str]

#: How long a call answered 401 waits, at most, for another call of its client to renew the token.
RENEW_WAIT = 60.0
#: How often it looks whether the renewal is over.
RENEW_LOOK = 0.05

#: The latest token of each (connection, server, user, password hash), shared within the process.
TOKENS: dict[TokenKey, TokenInfo] = {}
_SYNC_LOCKS: dict[TokenKey, threading.Lock] = {}
#: The login locks of each running event loop, by token key, while a coroutine holds or awaits one.
_ASYNC_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[TokenKey, _LoopLock]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class _LoopLock:
    """One loop's login lock for one token key, and how many coroutines hold or await it."""

    lock: asyncio.Lock
    users: int = 0


class LoginLock:
    """``async with auth.async_lock():``: the running loop's login lock of one token key, dropped from the
    module's state by the last coroutine that leaves it."""

    def __init__(self, key: TokenKey) -> None:
        self.key = key
        self._held: tuple[asyncio.AbstractEventLoop, _LoopLock] | None = None

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        entry = _ASYNC_LOCKS.setdefault(loop, {}).setdefault(self.key, _LoopLock(asyncio.Lock()))
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave(loop, entry)
            raise
        self._held = (loop, entry)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held is not None
        (loop, entry), self._held = self._held, None
        entry.lock.release()
        self._leave(loop, entry)

    def _leave(self, loop: asyncio.AbstractEventLoop, entry: _LoopLock) -> None:
        entry.users -= 1
        locks = _ASYNC_LOCKS.get(loop)
        if entry.users == 0 and locks is not None and locks.get(self.key) is entry:
            del locks[self.key]
            if not locks:
                _ASYNC_LOCKS.pop(loop, None)


class Auth:
    """The token state of one client, and the flows that keep it valid.

    :param settings: The connection settings (credentials or a fixed bearer token).
    :param log: Where to log (never a secret).
    """

    def __init__(self, settings: ConnectionSettings, log: logging.Logger | Any) -> None:
        self.settings = settings
        self.log = log
        self.token: TokenInfo | None = None
        #: True while a call of this client renews the token after a 401 (see :meth:`renew`).
        self.renewing = False
        #: Secrets learnt since the drivers last handed them to the masker (see :meth:`take_secrets`).
        self._new_secrets: list[str] = list(settings.secrets)

    @property
    def key(self) -> TokenKey:
        """Whose token: the same server, user and password (a changed password must log in again)."""
        settings = self.settings
        secret = hashlib.sha256((settings.password or "").encode()).hexdigest()
        return (settings.conn_id, settings.base_url, settings.login or "", secret)

    def take_secrets(self) -> list[str]:
        """Secrets to hand to a log masker now. Each driver step asks, so none is logged before it is masked."""
        fresh = list(dict.fromkeys(self._new_secrets))
        self._new_secrets.clear()
        return fresh

    def sync_lock(self) -> threading.Lock:
        """The lock a thread holds while it logs in for this connection."""
        return _SYNC_LOCKS.setdefault(self.key, threading.Lock())

    def async_lock(self) -> LoginLock:
        """The lock a coroutine of the running loop holds while it logs in for this connection (``async with``)."""
        return LoginLock(self.key)

    def login_due(self) -> bool:
        """True when a call would have to log in or refresh (no usable token here or in the shared cache)."""
        if self.settings.bearer_token:
            return False
        shared = TOKENS.get(self.key)
        token = self.token if self.token is not None and not self.token.refresh_due() else shared
        return token is None or token.refresh_due()

    def authenticate(self, force: bool = False) -> Flow[None]:
        """Make sure a valid token is at hand: log in, or refresh ahead of expiry, or after a 401 (``force``)."""
        settings = self.settings
        if settings.bearer_token:
            return
        shared = TOKENS.get(self.key)
        if force and shared is not None and shared is self.token:
            del TOKENS[self.key]  # refused by the server: no other client should use it either
        elif shared is not None and (
            self.token is None or (self.token.refresh_due() and not shared.refresh_due())
        ):
            self._adopt(shared)  # another client of this connection already logged in or refreshed
        token = self.token
        if token is not None and not force and not token.refresh_due():
            return
        if token is not None and token.refresh_token:
            body = json.dumps({"refreshToken": token.refresh_token}).encode()
            spec = Spec(
                "POST", "/login/refreshToken", "refresh the access token", body=body, authenticated=False
            )
            answer = yield Wire(spec, {"Content-Type": "application/json"})
            if answer is not None and answer.status == 200:
                self._accept(answer.value)
                return
            self.log.debug(
                "Refreshing the access token failed (HTTP %s); logging in again", answer and answer.status
            )
        self.token = None
        body = json.dumps({"username": settings.login, "password": settings.password}).encode()
        spec = Spec("POST", "/login", "log in", body=body, authenticated=False)
        answer = yield Wire(spec, {"Content-Type": "application/json"})
        assert answer is not None
        if answer.status in (400, 401, 403):
            raise MLServerAuthError(
                f"The server refused the login of user {quoted(settings.login)}: a wrong user name or password "
                f"(POST /login answered {answer.status}: {answer.error_message}). Check the login and password of "
                f"connection '{settings.conn_id}'."
            )
        if answer.status in (404, 405):  # no login there: another service, or a path too many or too few
            raise MLServerApiError(
                f"Could not log in: {settings.base_url} has no Machine Learning Server login (POST /login answered "
                f"{answer.status}: {answer.error_message}). Check the host, port and path of connection "
                f"'{settings.conn_id}': is a Machine Learning Server at that address?",
                answer.status,
                answer.error_message,
                spec.method,
                spec.path,
            )
        if answer.status >= 400:
            raise api_error(spec, answer)
        self._accept(answer.value)

    def renew(self, rejected: TokenInfo | None) -> Flow[None]:
        """Log in again after a 401 answered to ``rejected``, unless another call did meanwhile: one renewal for
        every call of this client answered 401 together (the others wait for it, up to :data:`RENEW_WAIT`)."""
        waited = 0.0
        while self.renewing and waited < RENEW_WAIT:
            yield Sleep(RENEW_LOOK)
            waited += RENEW_LOOK
        shared = TOKENS.get(self.key)
        if shared is not None and shared is not rejected and not shared.refresh_due():
            if shared is not self.token:
                self._adopt(shared)  # another client of this connection renewed it
            return
        self.renewing = True
        try:
            yield from self.authenticate(force=True)
        finally:
            self.renewing = False

    def _adopt(self, token: TokenInfo) -> None:
        """Use ``token`` (this client's new one, or one another client got); its secrets go to the masker."""
        self.token = token
        self._new_secrets.extend(t for t in (token.access_token, token.refresh_token) if t)

    def _accept(self, value: Any) -> None:
        token = TokenInfo.from_api(value)
        self._adopt(token)
        TOKENS[self.key] = token
        self.log.debug("Got an access token valid for %s s", token.lifetime)

    def wire(self, spec: Spec) -> Wire:
        """``spec`` with the headers of this attempt: content type and, if authenticated, the bearer token."""
        headers = {"Content-Type": spec.content_type} if spec.body is not None else {}
        headers.update(spec.headers)
        if spec.authenticated:
            token = self.settings.bearer_token or (self.token.access_token if self.token else None)
            if token:
                headers["Authorization"] = f"Bearer {token}"
        return Wire(spec, headers)

    def exchange(self, spec: Spec) -> Flow[Answer]:
        """Send ``spec`` authenticated; re-authenticate once on a 401; raise the API error of an error answer."""
        yield from self.authenticate()
        sent = self.token
        answer = yield self.wire(spec)
        assert answer is not None
        if answer.status == 401:
            settings = self.settings
            if settings.bearer_token:
                raise MLServerAuthError(
                    f"The server rejected the bearer token of connection '{settings.conn_id}' ({spec.label} "
                    f"answered 401: {answer.error_message}). Put a valid token in the connection "
                    "(extra 'access_token'), or give login and password so that the hook logs in itself."
                )
            self.log.info("The server answered 401 to %s; authenticating again", spec.label)
            yield from self.renew(sent)
            answer = yield self.wire(spec)
            assert answer is not None
            if answer.status == 401:
                raise MLServerAuthError(
                    f"The server answered 401 to {spec.label} even with a fresh token "
                    f"({answer.error_message}). Check that user {quoted(settings.login)} may use this "
                    "server."
                )
        if answer.status >= 400:
            raise api_error(spec, answer)
        return answer
