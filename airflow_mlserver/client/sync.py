"""The sync driver: runs flows with ``requests``, under the retry policy; and streams artifacts and results.

It only moves bytes. Every rule (what to send, how to authenticate, what to retry, what an answer means)
lives in the flows and in :mod:`~airflow_mlserver.client.protocol`.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests
import tenacity

from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.errors import MLServerConnectionError
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
from airflow_mlserver.client.tls import ca_context, unverified
from airflow_mlserver.client.transport import TransportFailure, transport_failure

T = TypeVar("T")


def requests_failure(
    exc: BaseException, connect_timeout: float | None = None, read_timeout: float | None = None
) -> Transient | None:
    """A ``requests`` failure as a retry class (may the request have reached the server or not), worded by
    :func:`~airflow_mlserver.client.transport.transport_failure`; None for anything else (a bug, a bad URL)."""
    if not isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError
        | ConnectionError,
    ):
        return None
    failure = transport_failure(exc, connect_timeout, read_timeout) or TransportFailure(
        "other", True, "the connection failed"
    )
    return Transient(failure.detail, sent=failure.sent, failure=failure)


class TransferStats:
    """Bytes of answer bodies read so far (benchmarks and tests measure polling cost with it)."""

    def __init__(self) -> None:
        self.bytes_received = 0


def environment_settings(base_url: str, verify: bool | str) -> tuple[str | None, bool | str]:
    """The proxy (None for none) and the certificate check the environment gives for requests to ``base_url``,
    by ``requests``' rules: ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``; with ``verify``
    True, ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``. Both drivers read it once per session."""
    with requests.Session() as session:
        found = session.merge_environment_settings(base_url, {}, None, verify, None)
    proxy: str | None = requests.utils.select_proxy(base_url, found["proxies"])
    return proxy, verify if found["verify"] is None else found["verify"]


class SyncDriver:
    """Runs flows over one ``requests`` session (its pooled connections are reused between calls).

    :param auth: The connection's authentication state.
    :param policy: The retry policy.
    :param log: Where to log.
    :param stats: The counter of bytes read.
    :param mask: Called with each new secret before anything could log it.
    """

    def __init__(
        self,
        auth: Auth,
        policy: RetryPolicy,
        log: logging.Logger | Any,
        stats: TransferStats,
        mask: Callable[[str], None] | None = None,
    ) -> None:
        self.auth = auth
        self.settings = auth.settings
        self.policy = policy
        self.log = log
        self.stats = stats
        self.mask = mask
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        """The ``requests`` session, with the environment (proxy, CA bundle) read once for the server's URL.

        ``requests`` would read the environment and ``~/.netrc`` again for every request (a large share of
        a small request's cost); the settings it would find are the same for every request to one server.
        A ``~/.netrc`` entry for the server is never used: the token is the only credential sent. For an https
        server, a CA bundle is loaded once here to check it, and Verify TLS false is said once
        (:mod:`~airflow_mlserver.client.tls`).
        """
        if self._session is None:
            proxy, verify = environment_settings(self.settings.base_url, self.settings.verify)
            if self.settings.base_url.startswith("https:"):
                ca_context(self.settings, verify)
                unverified(self.settings, verify, self.log)
            session = requests.Session()
            session.verify = verify
            session.proxies = {"all": proxy} if proxy else {}
            session.trust_env = False
            session.headers["Accept"] = "application/json"
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def run(self, flow: Flow[T]) -> T:
        """Run ``flow`` to its result; log in first (one thread at a time per connection) if due."""
        if self.auth.login_due():
            with self.auth.sync_lock():  # threads that waited adopt the token the first one got
                self._drive(self.auth.authenticate())
        return self._drive(flow)

    def flush_secrets(self) -> None:
        """Hand every secret learnt so far (settings, new tokens) to the masker; a driver does so each step."""
        for secret in self.auth.take_secrets():
            if self.mask is not None:
                self.mask(secret)

    def _drive(self, flow: Flow[T]) -> T:
        outcome: Answer | AmbiguousSend | None = None
        while True:
            try:
                step = resume(flow, outcome)
            except StopIteration as stop:
                self.flush_secrets()
                return stop.value  # type: ignore[no-any-return]
            self.flush_secrets()
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                outcome = None
            else:
                outcome = self._send(step)

    def _send(self, wire: Wire) -> Answer | AmbiguousSend:
        """Send one request under the retry policy; an ambiguous failure is handed back to the flow."""
        try:
            retrying = tenacity.Retrying(**self.policy.tenacity_args(self.settings, wire.spec, self.log))
            answer: Answer = retrying(self._send_once, wire)
            return answer
        except AmbiguousSend as exc:
            return exc

    def _send_once(self, wire: Wire) -> Answer:
        spec = wire.spec
        started = time.monotonic()
        response = None
        try:
            connect, read = min(10.0, self.settings.timeout), self.settings.timeout
            failure_of = functools.partial(requests_failure, connect_timeout=connect, read_timeout=read)
            with classified(wire, failure_of, self.settings):
                response = self.session.request(
                    spec.method,
                    self.settings.base_url + spec.path,
                    params=list(spec.params),
                    data=spec.body,
                    headers=dict(wire.headers),
                    timeout=(connect, read),
                    stream=True,
                )
                body = AnswerBody(wire, response.status_code, response.headers)
                if body.streamed:
                    stream, response = response, None  # the caller reads and closes it
                    return Answer(body.status, stream.headers, stream=stream)
                complete = True
                for chunk in response.iter_content(CHUNK_SIZE):
                    if body.feed(chunk):
                        complete = False
                        break
                self.stats.bytes_received += body.bytes_read
                self.log.debug(
                    "%s -> %d (%d bytes, %.0f ms)",
                    spec.label,
                    body.status,
                    body.bytes_read,
                    (time.monotonic() - started) * 1000,
                )
                return body.finish(complete)
        finally:
            if response is not None:
                response.close()


class ArtifactReader(io.BufferedReader):
    """A buffered stream of one artifact; ``size`` is its length as the server announced it (or None)."""

    size: int | None = None


class ResponseStream(io.RawIOBase):
    """A raw binary stream over a streamed ``requests`` answer (decoded, never loaded whole)."""

    def __init__(self, response: requests.Response, stats: TransferStats) -> None:
        self._response = response
        self._raw = response.raw
        self._raw.decode_content = True
        self._stats = stats

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except Exception as exc:
            failure = transport_failure(exc)
            raise MLServerConnectionError(
                f"Reading an artifact broke off ({failure.detail if failure else 'the stream failed'}); open it again."
            ) from None
        n = len(data)
        buffer[:n] = data
        self._stats.bytes_received += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()


def announced_size(headers: Mapping[str, str]) -> int | None:
    """The file's length from ``Content-Length``, unless the body is encoded (then it is not the file's)."""
    if headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        return None
    try:
        return int(headers["Content-Length"])
    except (KeyError, TypeError, ValueError):
        return None
