"""Every call of the Machine Learning Server API, each written once as a flow.

A flow builds its request :class:`~airflow_mlserver.client.protocol.Spec`, sends it through
:meth:`Auth.exchange <airflow_mlserver.client.auth.Auth.exchange>` (authentication, the 401 retry, error
mapping) and parses the answer into a typed object. Flows do no I/O: the sync and async drivers run them,
and a unit test can feed them canned answers.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.errors import (
    MalformedResponseError,
    MLServerApiError,
    MLServerConfigError,
    MLServerConnectionError,
    RecordValidationError,
    ServiceExistsError,
    ServiceNotFoundError,
)
from airflow_mlserver.client.models import (
    BatchStatus,
    RecordResult,
    ServiceDefinition,
    WebService,
    answer_list,
    answer_object,
    start_answer_execution_id,
)
from airflow_mlserver.client.protocol import (
    AmbiguousSend,
    Answer,
    Flow,
    ReadMode,
    Spec,
    check_segment,
    quote,
    valid_segment,
)
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.words import plural

if TYPE_CHECKING:
    # pandas (behind the records module) is imported only where records are prepared: a trigger imports
    # the client inside the triggerer's event loop, where a slow import would block every other trigger.
    from airflow_mlserver.client.records import ExtraColumns, RecordsInput

MAX_PARALLEL_COUNT = 100

#: The answer header of a server that honours a batch start's ``Idempotency-Key``, and its value.
KEYS_HEADER = "x-idempotency-keys"
#: Whether each server (by base URL) honours idempotency keys, as its latest answer said, in this process.
HONOURS_KEYS: dict[str, bool] = {}


class Calls:
    """The flows of every API call, for one connection.

    :param auth: The connection's authentication state (its settings come with it).
    :param log: Where to log.
    """

    def __init__(self, auth: Auth, log: logging.Logger | Any) -> None:
        self.auth = auth
        self.settings = auth.settings
        self.log = log

    # -- the server ------------------------------------------------------------------------------------------

    def test_connection(self) -> Flow[str]:
        """Log in and ask ``GET /status`` (or list the services); answer a sentence for a person."""
        settings = self.settings
        try:
            answer = yield from self.auth.exchange(Spec("GET", "/status", "ask the server's status"))
            # /status is not in the contract: any answer will do, and a status text is shown if there is one
            detail = answer.value.get("statusCode") if isinstance(answer.value, dict) else None
            summary = f"status {shortened(detail) if isinstance(detail, str) else 'unknown'}"
        except MLServerApiError as exc:
            if exc.status != 404:
                raise
            try:
                services = yield from self.list_services()
            except MLServerApiError as again:
                if again.status != 404:
                    raise
                raise MLServerApiError(
                    f"{settings.base_url} answered 404 to both GET /status and GET /services "
                    f"({again.server_message}): it does not serve a Machine Learning Server's API. Check the host, "
                    f"port and path of connection '{settings.conn_id}'.",
                    404,
                    again.server_message,
                    again.method,
                    again.path,
                ) from None
            summary = f"{plural(len(services), 'web service')} published"
        who = (
            f"as '{settings.login}'"
            if settings.login and not settings.bearer_token
            else "with a bearer token"
        )
        return f"Connected to the Machine Learning Server at {settings.base_url} {who}: {summary}."

    # -- web services ----------------------------------------------------------------------------------------

    def list_services(self) -> Flow[list[WebService]]:
        answer = yield from self.auth.exchange(Spec("GET", "/services", "list the web services"))
        return [WebService.from_api(s) for s in answer_list(answer.value, "GET /services")]

    def get_service(self, name: str, version: str | None) -> Flow[WebService]:
        service = ServiceRef(name, version, latest=True)
        spec = service.spec("GET", f"/services{service.segments}", "get")
        answer = yield from self.auth.exchange(spec)
        self.note(answer)
        value = answer.value
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ServiceNotFoundError(
                f"{service.subject} was not found ({spec.label} answered an empty list). Check the name and "
                "version; list_services() shows what is published.",
                200,
                "",
                "GET",
                spec.path,
            )
        return WebService.from_api(items[-1])  # versions come oldest first: the last is the latest

    def publish_service(
        self, name: str, version: str | None, definition: ServiceDefinition, replace: bool
    ) -> Flow[WebService]:
        service = ServiceRef(name, version, latest=True)
        data = json.dumps(definition.to_api()).encode()
        spec = service.spec("POST", f"/services{service.segments}", "publish", body=data, idempotent=False)
        consume_path = ""
        try:
            answer = yield from self.auth.exchange(spec)
            if not isinstance(answer.value, str):
                raise MalformedResponseError(
                    f"The server's answer to {spec.label} is {quoted(answer.value)}, not the consume path (a JSON "
                    "string). The server does not follow the Machine Learning Server API."
                )
            consume_path = answer.value
        except ServiceExistsError:
            if not replace or version is None:
                raise
            patch = service.spec("PATCH", spec.path, "update", body=data)
            yield from self.auth.exchange(patch)  # its answer is not needed: the version is known
        except AmbiguousSend as exc:
            if version is None:
                raise MLServerConnectionError(
                    f"Publishing a new version of web service {quoted(name)} failed after the request was sent "
                    f"({exc.reason}); it may or may not exist now. Check list_services() before publishing again."
                ) from None
            self.log.warning(
                "Publishing %s failed ambiguously (%s); checking whether it exists", service.words, exc.reason
            )
        if version is None:
            version = published_version(consume_path, name)
            if not valid_segment(version):
                raise MalformedResponseError(
                    f"The server's answer to {spec.label} does not name the new version: {quoted(consume_path)}. "
                    "The server does not follow the Machine Learning Server API."
                )
        return (yield from self.get_service(name, version))

    def delete_service(self, name: str, version: str, missing_ok: bool) -> Flow[bool]:
        service = ServiceRef(name, version)
        spec = service.spec("DELETE", f"/services{service.segments}", "delete")
        try:
            yield from self.auth.exchange(spec)
        except ServiceNotFoundError:
            if missing_ok:
                return False
            raise
        return True

    def get_swagger(self, name: str, version: str) -> Flow[dict[str, Any]]:
        service = ServiceRef(name, version)
        spec = service.spec("GET", f"/api{service.segments}/swagger.json", "get the swagger document of")
        answer = yield from self.auth.exchange(spec)
        return answer_object(answer.value, spec.label)

    # -- request-response ------------------------------------------------------------------------------------

    def consume(
        self, name: str, version: str, inputs: Mapping[str, Any], service: WebService | None, idempotent: bool
    ) -> Flow[RecordResult]:
        ref = ServiceRef(name, version)
        known = service or (yield from self.get_service(name, version))
        from airflow_mlserver.client.records import prepare_inputs

        body = json.dumps(prepare_inputs(inputs, known)).encode()
        spec = ref.spec("POST", f"/api{ref.segments}", "consume", body=body, idempotent=idempotent)
        try:
            answer = yield from self.auth.exchange(spec)
        except AmbiguousSend as exc:
            raise MLServerConnectionError(
                f"Consuming {ref.words} failed after the request was sent ({exc.reason}); the service may have "
                "run. Call again if that is harmless."
            ) from None
        return RecordResult.from_api(answer.value)

    # -- batch -----------------------------------------------------------------------------------------------

    def list_batch_executions(self, name: str, version: str) -> Flow[list[str]]:
        ref = ServiceRef(name, version)
        spec = ref.spec("GET", ref.batch_path, "list the batch executions of")
        answer = yield from self.auth.exchange(spec)
        self.note(answer)
        return names_list(answer.value, spec, "execution ids")

    def batch_records(
        self,
        name: str,
        version: str,
        records: RecordsInput,
        parallel_count: int,
        service: WebService | None,
        extra_columns: ExtraColumns,
    ) -> Flow[tuple[WebService, list[dict[str, Any]]]]:
        """The service and the records of a batch start, checked (nothing is sent but the service's lookup)."""
        if (
            isinstance(parallel_count, bool)
            or not isinstance(parallel_count, int)
            or not 1 <= parallel_count <= MAX_PARALLEL_COUNT
        ):
            raise MLServerConfigError(
                f"parallel_count must be a whole number from 1 to {MAX_PARALLEL_COUNT} (the server's maximum "
                f"threads per batch execution), not {quoted(parallel_count)}."
            )
        known = service or (yield from self.get_service(name, version))
        from airflow_mlserver.client.records import prepare_records

        return known, prepare_records(records, known, extra_columns)

    def send_start(
        self, name: str, version: str, records: list[dict[str, Any]], parallel_count: int, key: str
    ) -> Flow[tuple[str, bool]]:
        """Send one batch start with its idempotency key; answer the execution id and whether the server says it
        answered an earlier send of this key (``Idempotent-Replayed``). A failure that leaves unknown whether
        the server acted is raised as :class:`~airflow_mlserver.client.protocol.AmbiguousSend` (see
        :mod:`.reconcile`)."""
        ref = ServiceRef(name, version)
        spec = ref.spec(
            "POST",
            ref.batch_path,
            "start a batch of",
            params=(("parallelCount", str(parallel_count)),),
            body=_encode_records(records),
            idempotent=False,
            headers=(("Idempotency-Key", key),),
        )
        answer = yield from self.auth.exchange(spec)
        self.note(answer)
        replayed = any(
            k.lower() == "idempotent-replayed" and v.lower() == "true" for k, v in answer.headers.items()
        )
        return start_answer_execution_id(answer.value), replayed

    def note(self, answer: Answer) -> None:
        """Remember whether the server honours idempotency keys, as its answer says."""
        said = next((v for k, v in answer.headers.items() if k.lower() == KEYS_HEADER), "")
        HONOURS_KEYS[self.settings.base_url] = said.strip().lower() == "honoured"

    def honours_keys(self) -> bool | None:
        """Whether the server honours a start's idempotency key (None: none of its answers said yet)."""
        return HONOURS_KEYS.get(self.settings.base_url)

    def get_batch(self, name: str, version: str, execution_id: str, partial: bool) -> Flow[BatchStatus]:
        spec = batch_spec(name, version, execution_id, partial, "batch_full" if partial else "batch_head")
        answer = yield from self.auth.exchange(spec)
        head, raw_results = answer.value
        results = (
            None
            if raw_results is None
            else tuple(RecordResult.from_api(r, i) for i, r in enumerate(raw_results))
        )
        return BatchStatus.from_api(head, execution_id, name, version, results)

    def cancel_batch(self, name: str, version: str, execution_id: str) -> Flow[BatchStatus]:
        execution = ExecutionRef(ServiceRef(name, version), execution_id)
        spec = Spec(
            "DELETE",
            execution.path,
            f"cancel batch execution {quoted(execution_id)}",
            scope="execution",
            subject=execution.subject,
        )
        answer = yield from self.auth.exchange(spec)
        if isinstance(answer.value, dict) and "state" in answer.value:
            return BatchStatus.from_api(answer.value, execution_id, name, version)
        return (yield from self.get_batch(name, version, execution_id, False))

    def list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> Flow[list[str]]:
        execution = ExecutionRef(ServiceRef(name, version), execution_id)
        spec = Spec(
            "GET",
            f"{execution.path}/{record_index(index)}/files",
            f"list the artifacts of record {index}",
            scope="artifact",
            subject=f"Record {index} of batch execution {quoted(execution_id)}",
        )
        answer = yield from self.auth.exchange(spec)
        return names_list(answer.value, spec, "artifact file names")


# -- names in paths, and request specs shared by flows and the sync side's streamed reads ---------------------


@dataclass(frozen=True)
class ServiceRef:
    """A web service version (or, where ``latest`` allows ``version=None``, its latest) as paths and messages name it.

    Building one checks the name and the version (:func:`~airflow_mlserver.client.protocol.check_segment`).

    :param name: The service name.
    :param version: The version, or None.
    :param latest: Whether ``version=None`` (the latest version) is allowed.
    """

    name: str
    version: str | None
    latest: bool = False

    def __post_init__(self) -> None:
        check_segment(
            self.name, "Web service name", "use the name a service was published under (see list_services())"
        )
        if self.version is not None or not self.latest:
            check_segment(
                self.version, "Web service version", "use a published version (see list_services())"
            )

    @property
    def segments(self) -> str:
        """``/{name}`` or ``/{name}/{version}``, quoted."""
        return f"/{quote(self.name)}" + ("" if self.version is None else f"/{quote(self.version)}")

    @property
    def batch_path(self) -> str:
        """The path of the version's batch executions."""
        return f"/api{self.segments}/batch"

    @property
    def words(self) -> str:
        """``web service 'name' version 'version'``, for messages (long values cut)."""
        version = "" if self.version is None else f" version {quoted(self.version)}"
        return f"web service {quoted(self.name)}{version}"

    @property
    def subject(self) -> str:
        return self.words[0].upper() + self.words[1:]

    def spec(self, method: str, path: str, doing: str, **options: Any) -> Spec:
        """A request about this service (``doing`` it, e.g. "delete"): its 404 says the service is not found."""
        return Spec(method, path, f"{doing} {self.words}", scope="service", subject=self.subject, **options)


@dataclass(frozen=True)
class ExecutionRef:
    """One batch execution of a service version, as paths and messages name it (its id checked).

    :param service: The service version.
    :param execution_id: The execution id.
    """

    service: ServiceRef
    execution_id: str

    def __post_init__(self) -> None:
        check_segment(self.execution_id, "Batch execution id", "use the id start_batch() answered")

    @property
    def path(self) -> str:
        return f"{self.service.batch_path}/{quote(self.execution_id)}"

    @property
    def subject(self) -> str:
        return f"Batch execution {quoted(self.execution_id)} of {self.service.words}"


def batch_spec(name: str, version: str, execution_id: str, partial: bool, read: ReadMode) -> Spec:
    """``GET`` of one execution: a status poll (``batch_head``), all results, or their stream."""
    execution = ExecutionRef(ServiceRef(name, version), execution_id)
    return Spec(
        "GET",
        execution.path,
        f"get batch execution {quoted(execution_id)}",
        params=(("showPartialResults", "true" if partial else "false"),),
        read=read,
        scope="execution",
        subject=execution.subject,
    )


def artifact_spec(name: str, version: str, execution_id: str, index: int, file_name: str) -> Spec:
    """The streamed ``GET`` of one artifact; refuses a name that is not a plain file name."""
    execution = ExecutionRef(ServiceRef(name, version), execution_id)
    file_segment = quote(check_segment(file_name, "Artifact name", "give one from list_artifacts()"))
    return Spec(
        "GET",
        f"{execution.path}/{record_index(index)}/files/{file_segment}",
        f"read artifact {quoted(file_name)}",
        read="stream",
        scope="artifact",
        subject=f"Artifact {quoted(file_name)} of record {index} of batch execution {quoted(execution_id)}",
    )


def record_index(index: int) -> int:
    """``index`` if it is a record index (a whole number from 0)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise MLServerConfigError(
            f"Record index must be a whole number of at least 0 (indexes count from 0), not {quoted(index)}."
        )
    return index


def published_version(consume_path: str, name: str) -> str:
    """The version in the consume path ``.../api/{name}/{version}`` a publish answers; "" when it has none."""
    *_, path_name, version = ["", *consume_path.rstrip("/").split("/")]
    return urllib.parse.unquote(version) if urllib.parse.unquote(path_name) == name else ""


def names_list(value: Any, spec: Spec, what: str) -> list[str]:
    """A listing answer (execution ids, artifact file names): a list of names that can each be used in a path."""
    names = answer_list(value, spec.label)
    wrong = [n for n in names if not valid_segment(n)]
    if wrong:
        raise MalformedResponseError(
            f"The server's answer to {spec.label} is not a list of {what}: it holds {quoted(wrong[0])}"
            f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''}. The server does not follow the Machine "
            "Learning Server API."
        )
    return names


def _encode_records(records: list[dict[str, Any]]) -> bytes:
    """The batch body, by msgspec's C encoder (15 times the standard library's speed on 100,000 records).

    :func:`~airflow_mlserver.client.records.prepare_records` made every value plain JSON and refused infinite
    numbers (NaN is ``None`` by then), so what is left to refuse here is only what it let through unchanged.
    """
    try:
        return msgspec.json.encode(records)
    except (TypeError, ValueError, msgspec.MsgspecError) as exc:
        raise RecordValidationError(f"The records cannot be sent as JSON: {exc}.") from None
