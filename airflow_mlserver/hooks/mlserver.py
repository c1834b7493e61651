"""The hook: the Airflow glue of the Machine Learning Server client.

What is Airflow's here: reading the connection (sync, or async inside a trigger), handing secrets to Airflow's
masker, and the UI's Test button (the connection form itself is declared in the provider info,
:func:`airflow_mlserver.get_provider_info`). Every API call is the client's
(:class:`~airflow_mlserver.client.mlserver.MLServerClient`); the methods below only pass it on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlserver.client.errors import MLServerError
from airflow_mlserver.client.mlserver import MLServerClient
from airflow_mlserver.client.models import (
    BatchStatus,
    ParameterDefinition,
    RecordResult,
    ResultsPage,
    ServiceDefinition,
    WebService,
)
from airflow_mlserver.client.settings import ConnectionSettings
from airflow_mlserver.client.sync import ArtifactReader

if TYPE_CHECKING:
    from airflow_mlserver.client.records import ExtraColumns, RecordsInput

#: Longest a Test (the UI's button) waits for one answer, in seconds.
TEST_TIMEOUT = 8.0


class MLServerHook(BaseHook):
    """Talk to a Machine Learning Server (or the local, wire-compatible one): services, consume and batch.

    The connection (type ``mlserver``) gives the address and credentials. URIs:
    ``mlserver://admin:pw@localhost:12800`` (http) and ``mlserver+https://admin:pw@host`` (https);
    the host may also be a URL (``https://host/base``) and the schema field ``http`` or ``https``. Without a
    port, http uses 12800 (the one-box default) and https 443. Log in with login and password, or give a
    bearer token in the ``access_token`` extra (or in the password, with no login). Extras: ``verify``
    (true, false or a CA bundle path), ``timeout`` (seconds), ``max_retries``.

    Tokens are renewed before they expire and a 401 triggers one re-authentication; transient failures are
    retried (a busy server ``max_retries`` times, about two minutes by default; a server that refuses
    connections for about 15 s), and a batch start is reconciled instead of resent (see
    :class:`MLServerClient`). Password and tokens are registered with Airflow's secrets masker before
    anything could log them.

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
        self._client: MLServerClient | None = None

    # -- connection ----------------------------------------------------------------------------------------

    def _new_client(self, conn: Any, extras: Mapping[str, Any]) -> MLServerClient:
        settings = ConnectionSettings.from_connection(conn, extras)
        return self._client_for(settings.with_overrides(self.timeout, self.max_retries))

    def _client_for(self, settings: ConnectionSettings) -> MLServerClient:
        from airflow.sdk.log import amask_secret, mask_secret

        return MLServerClient(
            settings,
            retry_wait=self.retry_wait,
            retry_wait_max=self.retry_wait_max,
            log=self.log,
            mask=mask_secret,
            amask=amask_secret,
        )

    def get_conn(self) -> MLServerClient:
        """The client, from the connection read with the sync API (read once; its secrets masked at once)."""
        if self._client is None:
            conn = self.get_connection(self.mlserver_conn_id)
            client = self._new_client(conn, conn.extra_dejson)
            client.sync.flush_secrets()
            self._client = client
        return self._client

    async def aget_conn(self) -> MLServerClient:
        """The client, from the connection read with the async API (inside a trigger's event loop)."""
        if self._client is None:
            conn = await self.aget_connection(self.mlserver_conn_id)
            client = self._new_client(conn, await conn.aextra_dejson())
            await client.aio.flush_secrets()
            self._client = client
        return self._client

    @property
    def settings(self) -> ConnectionSettings:
        """The checked connection settings."""
        return self.get_conn().settings

    @property
    def bytes_received(self) -> int:
        """Bytes of answer bodies read so far (for benchmarks and tests of polling cost)."""
        return self._client.stats.bytes_received if self._client is not None else 0

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the async side's HTTP session (a trigger calls this when it ends)."""
        if self._client is not None:
            await self._client.aclose()

    def test_connection(self) -> tuple[bool, str]:
        """Log in and ask ``GET /status`` (or list the services): the UI's Test button.

        It answers within about :data:`TEST_TIMEOUT` seconds whatever the failure (one attempt, no retries),
        and its message names the server's URL. The UI tests a form under a made-up connection id, so the
        message speaks of "this connection" rather than naming one.
        """
        base_url = ""
        try:
            conn = self.get_connection(self.mlserver_conn_id)
            settings = ConnectionSettings.from_connection(conn, conn.extra_dejson)
            base_url = settings.base_url
            timeout = min(settings.timeout, TEST_TIMEOUT)
            with self._client_for(settings.with_overrides(timeout=timeout, max_retries=0)) as client:
                return True, client.test_connection()
        except MLServerError as exc:
            conn_id = self.mlserver_conn_id
            message = str(exc).replace(f"connection '{conn_id}'", "this connection")
            message = message.replace(f"Connection '{conn_id}'", "This connection")
            if base_url and base_url not in message:
                message = f"Machine Learning Server at {base_url}: {message}"
            return False, message

    # -- the calls: see MLServerClient for what each does ---------------------------------------------------

    def list_services(self) -> list[WebService]:
        """Every published web service version."""
        return self.get_conn().list_services()

    def get_service(self, name: str, version: str | None = None) -> WebService:
        """One version of a web service; ``version=None`` means the latest published version."""
        return self.get_conn().get_service(name, version)

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
        model_objects: Mapping[str, Any] | None = None,
    ) -> WebService:
        """Publish a web service (``version=None``: the server picks one); ``replace`` updates an existing one.

        ``model_objects`` (``{variable name: object}``) are variables of that name when the service code runs.
        A Python service's are serialized with dill; an R service's (``runtime_type="R"``) are RDS, what R's
        ``saveRDS`` writes, as bytes or the path of an ``.rds`` file (anything else raises
        :class:`~airflow_mlserver.exceptions.ModelObjectError` before a request is sent). They travel as a real
        server expects: a session of the service's runtime, each object uploaded to it, a snapshot, the
        publish with that snapshot, then the session closed and the snapshot deleted.

        The other parameters are those of :class:`~airflow_mlserver.client.models.ServiceDefinition`.
        """
        definition = ServiceDefinition(
            code,
            inputs,
            outputs,
            init_code,
            output_file_names,
            operation_id,
            description,
            runtime_type,
            snapshot_id,
        )
        return self.get_conn().publish_service(name, version, definition, replace, model_objects)

    def delete_service(self, name: str, version: str, missing_ok: bool = False) -> bool:
        """Delete a web service version; answer False when it was not there and ``missing_ok``."""
        return self.get_conn().delete_service(name, version, missing_ok)

    def get_swagger(self, name: str, version: str) -> dict[str, Any]:
        """The Swagger 2.0 document for consuming one service."""
        return self.get_conn().get_swagger(name, version)

    def consume(
        self,
        name: str,
        version: str,
        inputs: Mapping[str, Any],
        service: WebService | None = None,
        idempotent: bool = True,
    ) -> RecordResult:
        """Run the service once on ``inputs``; a failure in the service code is ``success=False``."""
        return self.get_conn().consume(name, version, inputs, service, idempotent)

    def list_batch_executions(self, name: str, version: str) -> list[str]:
        """The ids of the service's batch executions."""
        return self.get_conn().list_batch_executions(name, version)

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
        """Check the records, start a batch execution and answer its id; never two, never another's (see
        :meth:`~airflow_mlserver.client.mlserver.MLServerClient.start_batch`)."""
        return self.get_conn().start_batch(
            name, version, records, parallel_count, service, extra_columns, idempotency_key, before
        )

    def resend_start(
        self, service: WebService, records: RecordsInput, parallel_count: int, idempotency_key: str
    ) -> tuple[str, bool]:
        """Send a start again with an earlier send's key; answer the execution id and whether it was that
        send's (see :meth:`~airflow_mlserver.client.mlserver.MLServerClient.resend_start`)."""
        return self.get_conn().resend_start(service, records, parallel_count, idempotency_key)

    def honours_idempotency_keys(self, name: str, version: str) -> bool:
        """Whether the server honours a batch start's ``Idempotency-Key`` (the local server does)."""
        return self.get_conn().honours_idempotency_keys(name, version)

    def find_started_batch(
        self,
        service: WebService,
        records: RecordsInput,
        before: Sequence[str],
        exclude: Sequence[str] = (),
        look_until: float = 0.0,
        label: str = "the batch",
    ) -> str | None:
        """The execution a start of ``records`` whose answer was lost created, proven; None if none (see
        :meth:`~airflow_mlserver.client.mlserver.MLServerClient.find_started_batch`)."""
        return self.get_conn().find_started_batch(service, records, before, exclude, look_until, label)


    def get_batch(self, name: str, version: str, execution_id: str, partial: bool = False) -> BatchStatus:
        """State and counts of an execution (a cheap poll); with ``partial=True`` also its results so far."""
        return self.get_conn().get_batch(name, version, execution_id, partial)

    async def async_get_batch(
        self, name: str, version: str, execution_id: str, partial: bool = False
    ) -> BatchStatus:
        """:meth:`get_batch` for triggers: same rules, on aiohttp."""
        return await (await self.aget_conn()).async_get_batch(name, version, execution_id, partial)

    def cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """Cancel an execution (records already running finish); answer its status after the cancel."""
        return self.get_conn().cancel_batch(name, version, execution_id)

    async def async_cancel_batch(self, name: str, version: str, execution_id: str) -> BatchStatus:
        """:meth:`cancel_batch` for triggers: same rules, on aiohttp."""
        return await (await self.aget_conn()).async_cancel_batch(name, version, execution_id)

    def iter_batch_results(self, name: str, version: str, execution_id: str) -> Iterator[RecordResult]:
        """The execution's results, decoded one at a time as they stream in (memory bounded by one result)."""
        return self.get_conn().iter_batch_results(name, version, execution_id)

    def iter_batch_result_pages(self, name: str, version: str, execution_id: str) -> Iterator[ResultsPage]:
        """The execution's results as they stream in, a page per read (columns for a table, or records)."""
        return self.get_conn().iter_batch_result_pages(name, version, execution_id)

    def list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> list[str]:
        """The names of the files record ``index`` (0-based) produced."""
        return self.get_conn().list_artifacts(name, version, execution_id, index)

    def open_artifact(
        self, name: str, version: str, execution_id: str, index: int, file_name: str
    ) -> ArtifactReader:
        """A binary file object streaming one artifact; its ``size`` is the announced length, or None."""
        return self.get_conn().open_artifact(name, version, execution_id, index, file_name)

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
        return self.get_conn().download_artifact(name, version, execution_id, index, file_name, destination)


__all__ = ["ArtifactReader", "ConnectionSettings", "MLServerHook"]
