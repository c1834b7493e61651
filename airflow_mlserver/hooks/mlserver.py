"""The hook: the Airflow glue of the Machine Learning Server client.

What is Airflow's here: reading the connection (sync, or async inside a trigger), handing secrets to Airflow's
masker, and the UI's Test button (the connection form itself is declared in the provider info,
:func:`airflow_mlserver.get_provider_info`). Every API call is the client's
(:class:`~airflow_mlserver.client.mlserver.MLServerClient`); the methods below only pass it on.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_mlserver.client.errors import MLServerConfigError, MLServerError
from airflow_mlserver.client.mlserver import MLServerClient
from airflow_mlserver.client.models import (
    BatchStatus,
    ParameterDefinition,
    RecordResult,
    ResultsPage,
    ServiceDefinition,
    WebService,
)
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.settings import (
    ConnectionSettings,
    checked_max_retries,
    checked_timeout,
    port_problem,
    port_text,
)
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
    (true, false or a CA bundle path), ``timeout`` (seconds, at most a day), ``max_retries`` (0 to 100).

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
        if timeout is not None:
            checked_timeout(timeout, "MLServerHook's argument timeout")
        if max_retries is not None:
            checked_max_retries(max_retries, "MLServerHook's argument max_retries")
        self.mlserver_conn_id = mlserver_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_wait = retry_wait
        self.retry_wait_max = retry_wait_max
        self._client: MLServerClient | None = None

    # -- connection ----------------------------------------------------------------------------------------

    @classmethod
    def get_connection(cls, conn_id: str) -> Connection:
        """Airflow's connection ``conn_id``; one its environment variable defines unreadably is named as such.

        Airflow skips a connection it cannot read (``AIRFLOW_CONN_<ID>`` with a port out of range, say) and
        then answers that the connection "isn't defined": this says what is wrong with the variable instead.
        """
        try:
            return super().get_connection(conn_id)
        except AirflowNotFoundException:
            _raise_if_unreadable(conn_id)
            raise

    @classmethod
    async def aget_connection(cls, conn_id: str) -> Connection:
        """:meth:`get_connection` with Airflow's async API (inside a trigger's event loop)."""
        try:
            return await super().aget_connection(conn_id)
        except AirflowNotFoundException:
            _raise_if_unreadable(conn_id)
            raise

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

    async def aget_conn(self, conn: Connection | None = None) -> MLServerClient:
        """The client, from the connection read with the async API (inside a trigger's event loop), or from
        ``conn`` when given (already read: :func:`airflow_mlserver.hooks.shared.cached_connection`)."""
        if self._client is None:
            conn = conn if conn is not None else await self.aget_connection(self.mlserver_conn_id)
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

    async def async_list_batch_executions(self, name: str, version: str) -> list[str]:
        """:meth:`list_batch_executions` for triggers: the same flow, on aiohttp."""
        client = await self.aget_conn()
        return await client.arun(client.calls.list_batch_executions(name, version))

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


# -- a connection Airflow could not read from its environment variable -----------------------------------------

#: The extras whose values a message may show; any other query value of a URI (a token) is masked.
_SHOWN_EXTRAS = frozenset({"verify", "timeout", "max_retries"})
#: The fields of a connection's JSON form (Airflow's ``Connection.from_json``).
_JSON_FIELDS = ("conn_type", "host", "port", "schema", "login", "password", "extra", "description")
_EXAMPLE_URI = "'mlserver://admin:...@localhost:12800'"
_PORT_FIX = "give a port from 1 to 65535, or leave it out for the default (12800 for http, 443 for https)"


def _raise_if_unreadable(conn_id: str) -> None:
    """Raise :class:`MLServerConfigError` if ``AIRFLOW_CONN_<ID>`` is set but Airflow cannot read it.

    Airflow's environment backend skips such a variable silently; the same parse is tried here, and its
    failure explained: the URI quoted with its password and tokens masked, a JSON form never quoted.
    """
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = os.environ.get(variable)
    if value is None:
        return
    start = f"Connection '{conn_id}': the environment variable {variable}"
    text = value.strip()
    if not text:
        raise MLServerConfigError(
            f"{start} is set but empty, so Airflow skips it: set it to the connection's URI (e.g. {_EXAMPLE_URI}) "
            "or JSON, or unset it."
        )
    is_json = text.startswith("{")
    try:
        if is_json:
            Connection.from_json(text, conn_id=conn_id)
        else:
            Connection.from_uri(text, conn_id=conn_id)
    except Exception as exc:  # what Airflow's environment backend met, and skipped
        failure = type(exc).__name__
    else:
        return  # Airflow reads it: the connection is missing for another reason
    if is_json:
        raise MLServerConfigError(
            f"{start} holds JSON that Airflow cannot read: {_json_problem(text, failure)}."
        )
    raise MLServerConfigError(
        f"{start} holds a URI that Airflow cannot read ({quoted(_masked_uri(text))}): {_uri_problem(text)}."
    )


def _uri_problem(uri: str) -> str:
    """What makes a connection URI unreadable to Airflow, and the fix (never a secret of it)."""
    rest = uri.partition("://")[2]
    if "://" in rest:
        return (
            "a host given as a URL must be percent-encoded; give the scheme by the connection type instead "
            "('mlserver+https://admin:...@ml.example.com/base') or encode the URL "
            "('mlserver://admin:...@https%3A%2F%2Fml.example.com')"
        )
    netloc = rest.rpartition("@")[2]  # after the password, whatever it holds
    for end in "/?#":
        netloc = netloc.partition(end)[0]
    port = port_text(netloc)
    problem = port_problem(port) if port else None
    if problem and port.strip("0"):  # Airflow reads port 0 (the settings refuse it)
        return f"its port {problem[0]} is {problem[1]}; {_PORT_FIX}"
    return "percent-encode any '/', '?', '#', '@' or ':' in its login, password or host (e.g. 'p%40ss' for 'p@ss')"


def _masked_uri(uri: str) -> str:
    """``uri`` with its password, and every query value but the harmless extras', as ``***``."""
    scheme, separator, rest = uri.partition("://")
    if not separator:
        scheme, rest = "", uri
    userinfo, at, rest = rest.rpartition("@")
    if ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:***"
    head, question, query = rest.partition("?")
    if question:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{key}{equals}{value if urllib.parse.unquote(key) in _SHOWN_EXTRAS else '***'}"
            for key, equals, value in pairs
        )
    return f"{scheme}{separator}{userinfo}{at}{head}{question}{query}"


def _json_problem(text: str, failure: str) -> str:
    """What makes a connection's JSON unreadable to Airflow, and the fix (no value of it but the port)."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        return (
            f"it is not valid JSON ({exc.msg} at character {exc.pos}); write an object of connection fields "
            f"({', '.join(_JSON_FIELDS)}), or a URI such as {_EXAMPLE_URI}"
        )
    if isinstance(fields.get("uri"), str):  # Airflow also takes {"uri": "mlserver://..."}
        return _uri_problem(fields["uri"])
    unknown = [str(key) for key in fields if key not in _JSON_FIELDS]
    if unknown:
        return (
            f"a connection has no field {shortened(', '.join(map(repr, unknown)))}; its fields are "
            f"{', '.join(_JSON_FIELDS)} (put extras such as 'timeout' inside 'extra')"
        )
    port = fields.get("port")
    try:
        int(port) if port else None
    except (TypeError, ValueError):
        return f"its port {quoted(port)} is not a number; {_PORT_FIX}"
    return f"Airflow could not build a connection from its fields ({failure}); check each field's value"


__all__ = ["ArtifactReader", "ConnectionSettings", "MLServerHook"]
