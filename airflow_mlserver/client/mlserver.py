"""``MLServerClient``: every call of the Machine Learning Server API, sync and async, typed.

Each public method runs one flow of :mod:`~airflow_mlserver.client.calls` with the sync driver (requests) or,
for the ``async_`` ones, the async driver (aiohttp). Usable on its own::

    settings = ConnectionSettings(conn_id="ml", base_url="http://localhost:12800", login="admin", password="...")
    client = MLServerClient(settings)
    execution_id = client.start_batch("TxService", "1.0", df, parallel_count=10)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import requests

from airflow_mlserver.client.aio import AsyncDriver
from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.calls import Calls, artifact_spec, batch_spec
from airflow_mlserver.client.errors import MLServerConnectionError
from airflow_mlserver.client.models import (
    BatchStatus,
    RecordResult,
    ResultsPage,
    ServiceDefinition,
    WebService,
)
from airflow_mlserver.client.protocol import CHUNK_SIZE, Flow, RetryPolicy
from airflow_mlserver.client.publishing import encode_model_objects, publish_with_objects
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.starting import Starter
from airflow_mlserver.client.streaming import BatchAnswerParser
from airflow_mlserver.client.sync import (
    ArtifactReader,
    ResponseStream,
    SyncDriver,
    TransferStats,
    announced_size,
)
from airflow_mlserver.client.transport import transport_failure
from airflow_mlserver.client.words import plural

if TYPE_CHECKING:
    from airflow_mlserver.client.records import ExtraColumns, RecordsInput

T = TypeVar("T")


class MLServerClient:
    """A client of one Machine Learning Server (or the local, wire-compatible one), for one user.

    Tokens are renewed before they expire (``POST /login/refreshToken``, else a new login); a 401 triggers one
    re-authentication and a retry. Connection errors, timeouts, 429 (after ``Retry-After``), 502, 503 and 504
    are retried with exponential backoff and jitter when the call is idempotent; starting a batch is not, and
    is reconciled against the service's executions instead (see :meth:`start_batch`). A request that never
    reaches a server (refused, unknown host) is retried for about 15 s only, a busy server ``max_retries``
    times (see :class:`~airflow_mlserver.client.protocol.RetryPolicy`).

    :param settings: Where the server is and how to authenticate.
    :param retry_wait: First backoff wait in seconds (doubles each retry, plus up to as much jitter).
    :param retry_wait_max: Longest backoff wait in seconds.
    :param log: Where to log (a ``logging.Logger`` or compatible); secrets are never logged.
    :param mask: Called with each secret (password, tokens) before it could reach a log, e.g. a log masker.
    :param amask: The same for the async side.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        retry_wait: float = 1.0,
        retry_wait_max: float = 30.0,
        log: logging.Logger | Any = None,
        mask: Callable[[str], None] | None = None,
        amask: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log if log is not None else logging.getLogger(__name__)
        self.auth = Auth(settings, self.log)
        self.calls = Calls(self.auth, self.log)
        #: Bytes of answer bodies read so far (benchmarks and tests measure polling cost with it).
        self.stats = TransferStats()
        policy = RetryPolicy(settings.max_retries, retry_wait, retry_wait_max)
        self.sync = SyncDriver(self.auth, policy, self.log, self.stats, mask)
        self.aio = AsyncDriver(self.auth, policy, self.log, self.stats, amask)
        self.starter = Starter(self)

    def run(self, flow: Flow[T]) -> T:
        """Run any flow of :class:`~airflow_mlserver.client.calls.Calls` synchronously."""
        return self.sync.run(flow)

    async def arun(self, flow: Flow[T]) -> T:
        """Run any flow of :class:`~airflow_mlserver.client.calls.Calls` on the running event loop."""
        return await self.aio.run(flow)

    def close(self) -> None:
        """Close the sync side's HTTP session (its pooled connections)."""
        self.sync.close()

    async def aclose(self) -> None:
        """Close the async side's HTTP session (a trigger calls this when it ends)."""
        await self.aio.close()

    def __enter__(self) -> MLServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MLServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def test_connection(self) -> str:
        """Log in and ask ``GET /status`` (or list the services); answer a sentence for a person."""
        return self.run(self.calls.test_connection())

    # -- web services ----------------------------------------------------------------------------------------

    def list_services(self) -> list[WebService]:
        """Every published web service version."""
        return self.run(self.calls.list_services())

    def get_service(self, name: str, version: str | None = None) -> WebService:
        """One version of a web service; ``version=None`` means the latest published version."""
        return self.run(self.calls.get_service(name, version))

    def publish_service(
        self,
        name: str,
        version: str | None,
        definition: ServiceDefinition,
        replace: bool = False,
        model_objects: Mapping[str, Any] | None = None,
    ) -> WebService:
        """Publish a web service (``version=None``: the server picks one); ``replace`` updates an existing one.

        ``model_objects`` (``{variable name: object}``) travel through a session and a snapshot, and are
        variables of that name when the service code runs: a Python service's are serialized with dill, an R
        service's must be RDS, as bytes or the path of an ``.rds`` file (else
        :class:`~airflow_mlserver.client.errors.ModelObjectError`, before anything is sent). See
        :mod:`~airflow_mlserver.client.publishing`.
        """
        if not model_objects:
            return self.run(self.calls.publish_service(name, version, definition, replace))
        objects = encode_model_objects(definition.runtime_type, model_objects)
        return self.run(publish_with_objects(self.calls, name, version, definition, objects, replace))

    def delete_service(self, name: str, version: str, missing_ok: bool = False) -> bool:
        """Delete a web service version; answer False when it was not there and ``missing_ok``."""
        return self.run(self.calls.delete_service(name, version, missing_ok))

    def get_swagger(self, name: str, version: str) -> dict[str, Any]:
        """The Swagger 2.0 document for consuming one service."""
        return self.run(self.calls.get_swagger(name, version))

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
        return self.run(self.calls.consume(name, version, inputs, service, idempotent))

    # -- batch -----------------------------------------------------------------------------------------------

    def list_batch_executions(self, name: str, version: str) -> list[str]:
        """The ids of the service's batch executions."""
        return self.run(self.calls.list_batch_executions(name, version))

    def start_batch(
        self,
        name: str,
        version: str,
        records: RecordsInput,
        parallel_count: int = 10,
        service: WebService | None = None,
        extra_columns: ExtraColumns = "error",
        idempotency_key: str | None = None,
        before: Sequence[str] | None = None,
    ) -> str:
        """Check the records against the service's inputs, start a batch execution and answer its id.

        Starting is not idempotent, so it is never blindly resent, and no one else's execution is ever taken for
        it (:mod:`~airflow_mlserver.client.reconcile` has the rule): the start carries an ``Idempotency-Key``;
        after a failure that leaves unknown whether the server acted, a server that honours keys is sent it
        again with the same key, another has the new executions of that size compared with this start's
        records, and :class:`AmbiguousStartError` names them when that cannot tell.

        :param records: A DataFrame, a list of dicts or a dict of columns (see :mod:`airflow_mlserver.client.records`).
        :param parallel_count: Records run at a time on the server (1 to 100).
        :param service: The service's description, if already fetched (saves a request).
        :param extra_columns: ``"error"`` or ``"drop"`` for columns the service does not declare.
        :param idempotency_key: The start's key (a new random one by default; give the same one only to send the
            same start again).
        :param before: The service's execution ids just before, if the caller has them (saves listing them).
        """
        known, prepared = self.run(
            self.calls.batch_records(name, version, records, parallel_count, service, extra_columns)
        )
        return self.starter.start(known, prepared, parallel_count, idempotency_key, before)

    def resend_start(
        self, service: WebService, records: RecordsInput, parallel_count: int, idempotency_key: str
    ) -> tuple[str, bool]:
        """Send a start again with the key an earlier send had (a server that honours keys answers the execution
        that send created, if it did, else starts it now); answer the execution id and whether it was the
        earlier send's."""
        known, prepared = self.run(
            self.calls.batch_records(
                service.name, service.version, records, parallel_count, service, "ignore"
            )
        )
        return self.starter.send(known, prepared, parallel_count, idempotency_key, None, True)

    def honours_idempotency_keys(self, name: str, version: str) -> bool:
        """Whether the server honours a batch start's ``Idempotency-Key`` (the local server does, a real one
        does not)."""
        return self.starter.honours_keys(name, version)

    def find_started_batch(
        self,
        service: WebService,
        records: RecordsInput,
        before: Sequence[str],
        exclude: Sequence[str] = (),
        look_until: float = 0.0,
        label: str = "the batch",
    ) -> str | None:
        """The execution that a start of ``records`` whose answer was lost created, proven by its results; None
        when it created none; :class:`AmbiguousStartError` when that cannot be told (see
        :meth:`~airflow_mlserver.client.starting.Starter.find`)."""
        _, prepared = self.run(
            self.calls.batch_records(service.name, service.version, records, 1, service, "ignore")
        )
        return self.starter.find(service, prepared, before, exclude, look_until, label)

    def get_batch(self, name: str, version: str, execution_id: str, partial: bool = False) -> BatchStatus:
        """State and counts of an execution; with ``partial=True`` also the results finished so far.

        Without ``partial`` this is a cheap status poll: only the head of the answer is read, whatever the
        batch size (the server sends the whole results list once the execution has finished).
        """
        return self.run(self.calls.get_batch(name, version, execution_id, partial))

    async def async_get_batch(
        self, name: str, version: str, execution_id: str, partial: bool = False
    ) -> BatchStatus:
        """:meth:`get_batch` for triggers: same flow, on aiohttp."""
        return await self.arun(self.calls.get_batch(name, version, execution_id, partial))

    def cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """Cancel an execution (records already running finish); answer its status after the cancel."""
        return self.run(self.calls.cancel_batch(name, version, execution_id))

    async def async_cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """:meth:`cancel_batch` for triggers: same flow, on aiohttp."""
        return await self.arun(self.calls.cancel_batch(name, version, execution_id))

    def iter_batch_results(self, name: str, version: str, execution_id: str) -> Iterator[RecordResult]:
        """The execution's results, decoded one at a time as they stream in (memory bounded by one result).

        On an unfinished execution these are the results finished so far. If the stream breaks off, a
        finished execution's results are requested again and the ones already yielded are skipped.
        """
        for page in self.iter_batch_result_pages(name, version, execution_id):
            yield from page
            del page  # not alive while the next page decodes (see ResultsPage)

    def iter_batch_result_pages(self, name: str, version: str, execution_id: str) -> Iterator[ResultsPage]:
        """The execution's results as they stream in, a page per read of the stream (memory bounded by one read,
        or one result larger than that): :meth:`iter_batch_results` for a table, as columns.

        Resumed as :meth:`iter_batch_results` is, after the pages already yielded.
        """
        spec = batch_spec(name, version, execution_id, True, "stream")
        yielded = 0
        failures = 0
        while True:
            response = self.run(self.auth.exchange(spec)).stream
            parser = BatchAnswerParser(spec.label, skip=yielded)
            try:
                try:
                    for chunk in response.iter_content(CHUNK_SIZE):
                        items = parser.feed(chunk)
                        if items:
                            yielded += len(items)
                            yield ResultsPage(items, yielded - len(items))
                        del items  # not alive while the next read decodes (see ResultsPage)
                    items = parser.close()
                    if items:
                        yield ResultsPage(items, yielded)
                    return
                finally:
                    self.stats.bytes_received += parser.bytes_read
                    response.close()
            except (requests.exceptions.RequestException, ConnectionError) as exc:
                finished = BatchStatus.from_api(
                    {"state": "running", "totalItemCount": 0, "completedItemCount": 0, **parser.head}
                ).is_finished
                failures += 1
                failure = transport_failure(exc, read_timeout=self.settings.timeout)
                why = failure.detail if failure else "the request failed"
                if (yielded and not finished) or failures > self.settings.max_retries:
                    raise MLServerConnectionError(
                        f"Reading the results of batch execution {quoted(execution_id)} broke off after "
                        f"{plural(yielded, 'result')} ({why}). Read them again once the execution has finished."
                    ) from None
                self.log.warning(
                    "Reading results broke off after %s (%s); resuming", plural(yielded, "result"), why
                )

    # -- artifacts -------------------------------------------------------------------------------------------

    def list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> list[str]:
        """The names of the files record ``index`` (0-based) produced."""
        return self.run(self.calls.list_artifacts(name, version, execution_id, index))

    def open_artifact(
        self, name: str, version: str, execution_id: str, index: int, file_name: str
    ) -> ArtifactReader:
        """A binary file object streaming one artifact from the server (close it, or use ``with``).

        Its ``size`` is the length the server announced, or None when the answer does not say.
        """
        spec = artifact_spec(name, version, execution_id, index, file_name)
        response = self.run(self.auth.exchange(spec)).stream
        reader = ArtifactReader(ResponseStream(response, self.stats), CHUNK_SIZE)
        reader.size = announced_size(response.headers)
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
