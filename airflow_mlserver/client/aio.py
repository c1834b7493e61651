"""The async driver: runs the same flows with aiohttp, for triggers. Nothing here blocks the event loop.

aiohttp is imported when the driver is built, not with the client: the sync side never needs it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity

from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.errors import MLServerConfigError
from airflow_mlserver.client.protocol import (
    CHUNK_SIZE,
    AmbiguousSend,
    Answer,
    AnswerBody,
    Flow,
    RetryPolicy,
    Sleep,
    Transient,
    Wire,
    classified,
    resume,
)
from airflow_mlserver.client.sync import TransferStats, environment_settings
from airflow_mlserver.client.tls import ca_context, unverified
from airflow_mlserver.client.transport import TransportFailure, transport_failure

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")


def aiohttp_failure(
    exc: BaseException, connect_timeout: float | None = None, read_timeout: float | None = None
) -> Transient | None:
    """An aiohttp failure as a retry class (may the request have reached the server or not), worded by
    :func:`~airflow_mlserver.client.transport.transport_failure`; None for anything else."""
    import aiohttp

    if not isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError | ConnectionError
    ):
        return None
    failure = transport_failure(exc, connect_timeout, read_timeout) or TransportFailure(
        "other", True, "the connection failed"
    )
    return Transient(failure.detail, sent=failure.sent, failure=failure)


class AsyncDriver:
    """Runs flows over one aiohttp session, kept between calls on the same event loop.

    A trigger polling every few seconds reuses its keep-alive connection. Parameters as :class:`SyncDriver
    <airflow_mlserver.client.sync.SyncDriver>`, with ``amask`` the async masker.
    """

    def __init__(
        self,
        auth: Auth,
        policy: RetryPolicy,
        log: logging.Logger | Any,
        stats: TransferStats,
        amask: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.auth = auth
        self.settings = auth.settings
        self.policy = policy
        self.log = log
        self.stats = stats
        self.amask = amask
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: str | None = None

    async def session(self) -> aiohttp.ClientSession:
        import aiohttp

        session = self._session
        if session is None or session.closed or self._loop is not asyncio.get_running_loop():
            # the environment as the sync driver reads it; never ~/.netrc (aiohttp's trust_env would read it,
            # and refuse a request that carries both its Basic auth and the token)
            self._proxy, verify = await asyncio.to_thread(
                environment_settings, self.settings.base_url, self.settings.verify
            )
            ssl: Any = None
            if self.settings.base_url.startswith("https:"):
                # a CA bundle loaded (and checked) off the loop; Verify TLS false said once, as by the sync driver
                ssl = False if verify is False else await asyncio.to_thread(ca_context, self.settings, verify)
                unverified(self.settings, verify, self.log)
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, self.settings.timeout), sock_read=self.settings.timeout
            )
            session = aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(ssl=ssl),
                headers={"Accept": "application/json"},
            )
            self._session, self._loop = session, asyncio.get_running_loop()
        return session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def run(self, flow: Flow[T]) -> T:
        """Run ``flow`` to its result; log in first (one coroutine at a time per connection) if due."""
        session = await self.session()
        if self.auth.login_due():
            # hundreds of triggers starting together would otherwise each log in (and each add new secrets
            # to the masker)
            async with self.auth.async_lock():
                await self._drive(session, self.auth.authenticate())
        return await self._drive(session, flow)

    async def flush_secrets(self) -> None:
        """Hand every secret learnt so far (settings, new tokens) to the masker; a driver does so each step."""
        for secret in self.auth.take_secrets():
            if self.amask is not None:
                await self.amask(secret)

    async def _drive(self, session: aiohttp.ClientSession, flow: Flow[T]) -> T:
        outcome: Answer | AmbiguousSend | None = None
        while True:
            try:
                step = resume(flow, outcome)
            except StopIteration as stop:
                await self.flush_secrets()
                return stop.value  # type: ignore[no-any-return]
            await self.flush_secrets()
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
            else:
                outcome = await self._send(session, step)

    async def _send(self, session: aiohttp.ClientSession, wire: Wire) -> Answer | AmbiguousSend:
        try:
            retrying = tenacity.AsyncRetrying(**self.policy.tenacity_args(self.settings, wire.spec, self.log))
            answer: Answer = await retrying(self._send_once, session, wire)
            return answer
        except AmbiguousSend as exc:
            return exc

    async def _send_once(self, session: aiohttp.ClientSession, wire: Wire) -> Answer:
        spec = wire.spec
        if spec.read == "stream":
            raise MLServerConfigError(f"{spec.label} streams its answer, which the async side does not do.")
        connect, read = min(10.0, self.settings.timeout), self.settings.timeout
        failure_of = functools.partial(aiohttp_failure, connect_timeout=connect, read_timeout=read)
        with classified(wire, failure_of, self.settings):
            async with session.request(
                spec.method,
                self.settings.base_url + spec.path,
                params=list(spec.params),
                data=spec.body,
                headers=dict(wire.headers),
                proxy=self._proxy,
            ) as response:
                body = AnswerBody(wire, response.status, dict(response.headers))
                complete = True
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    if body.feed(chunk):
                        complete = False
                        await _end_early(response)
                        break
                self.stats.bytes_received += body.bytes_read
                return body.finish(complete)


#: The most an answer may still hold, once its reader needs no more, to be read to its end anyway: its keep-alive
#: connection is then reused (a status poll reads only the head of an answer that may carry results; closing
#: would cost a new connection, and a TLS handshake, at the next poll).
DRAIN_LIMIT = 16 * 1024


async def _end_early(response: aiohttp.ClientResponse) -> None:
    """Stop reading ``response``: read a rest of at most :data:`DRAIN_LIMIT` bytes so that its connection is
    kept, or close it."""
    content, drained = response.content, 0
    while not content.at_eof():
        if drained > DRAIN_LIMIT:
            response.close()  # a large rest is not worth reading
            return
        drained += len(await content.readany())
