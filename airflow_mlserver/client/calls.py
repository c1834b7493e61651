"""Every call of the Machine Learning Server API, each written once as a flow.

A flow builds its request :class:`~airflow_mlserver.client.protocol.Spec`, sends it through
:meth:`Auth.exchange <airflow_mlserver.client.auth.Auth.exchange>` (authentication, the 401 retry, error
mapping) and parses the answer into a typed object. Flows do no I/O: the sync and async drivers run them,
and a unit test can feed them canned answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.auth import Auth
from airflow_mlserver.client.errors import (
    AmbiguousStartError,
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
    Flow,
    ReadMode,
    Sleep,
    Spec,
    quote,
)

if TYPE_CHECKING:
    # pandas (behind the records module) is imported only where records are prepared: a trigger imports
    # the client inside the triggerer's event loop, where a slow import would block every other trigger.
    from airflow_mlserver.client.records import ExtraColumns, RecordsInput

MAX_PARALLEL_COUNT = 100


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
            detail = (
                answer.value.get("statusCode", "unknown") if isinstance(answer.value, dict) else "unknown"
            )
            summary = f"status {detail}"
        except MLServerApiError as exc:
            if exc.status != 404:
                raise
            services = yield from self.list_services()
            summary = f"{len(services)} web services published"
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
        if version is None:
            path, subject = f"/services/{quote(name)}", f"Web service '{name}'"
        else:
            path = f"/services/{quote(name)}/{quote(version)}"
            subject = f"Web service '{name}' version '{version}'"
        spec = Spec("GET", path, f"get web service '{name}'", scope="service", subject=subject)
        answer = yield from self.auth.exchange(spec)
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

    def publish_service(
        self, name: str, version: str | None, definition: ServiceDefinition, replace: bool
    ) -> Flow[WebService]:
        data = json.dumps(definition.to_api()).encode()
        path = f"/services/{quote(name)}" + (f"/{quote(version)}" if version is not None else "")
        subject = f"Web service '{name}'" + (f" version '{version}'" if version is not None else "")
        spec = Spec(
            "POST",
            path,
            f"publish {subject.lower()}",
            body=data,
            idempotent=False,
            scope="service",
            subject=subject,
        )
        try:
            answer = yield from self.auth.exchange(spec)
            consume_path = answer.value if isinstance(answer.value, str) else ""
        except ServiceExistsError:
            if not replace or version is None:
                raise
            patch = Spec(
                "PATCH", path, f"update {subject.lower()}", body=data, scope="service", subject=subject
            )
            answer = yield from self.auth.exchange(patch)
            consume_path = answer.value if isinstance(answer.value, str) else ""
        except AmbiguousSend as exc:
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
        return (yield from self.get_service(name, version))

    def delete_service(self, name: str, version: str, missing_ok: bool) -> Flow[bool]:
        path = f"/services/{quote(name)}/{quote(version)}"
        subject = f"Web service '{name}' version '{version}'"
        try:
            yield from self.auth.exchange(
                Spec("DELETE", path, f"delete {subject.lower()}", scope="service", subject=subject)
            )
        except ServiceNotFoundError:
            if missing_ok:
                return False
            raise
        return True

    def get_swagger(self, name: str, version: str) -> Flow[dict[str, Any]]:
        path = f"/api/{quote(name)}/{quote(version)}/swagger.json"
        subject = f"Web service '{name}' version '{version}'"
        answer = yield from self.auth.exchange(
            Spec("GET", path, "get the swagger document", scope="service", subject=subject)
        )
        return answer_object(answer.value, f"GET {path}")

    # -- request-response ------------------------------------------------------------------------------------

    def consume(
        self, name: str, version: str, inputs: Mapping[str, Any], service: WebService | None, idempotent: bool
    ) -> Flow[RecordResult]:
        known = service or (yield from self.get_service(name, version))
        from airflow_mlserver.client.records import prepare_inputs

        body = json.dumps(prepare_inputs(inputs, known)).encode()
        spec = Spec(
            "POST",
            f"/api/{quote(name)}/{quote(version)}",
            f"consume web service '{name}' version '{version}'",
            body=body,
            idempotent=idempotent,
            scope="service",
            subject=f"Web service '{name}' version '{version}'",
        )
        try:
            answer = yield from self.auth.exchange(spec)
        except AmbiguousSend as exc:
            raise MLServerConnectionError(
                f"Consuming web service '{name}' version '{version}' failed after the request was sent "
                f"({exc.reason}); the service may have run. Call again if that is harmless."
            ) from None
        return RecordResult.from_api(answer.value)

    # -- batch -----------------------------------------------------------------------------------------------

    def list_batch_executions(self, name: str, version: str) -> Flow[list[str]]:
        spec = Spec(
            "GET",
            batch_path(name, version),
            f"list the batch executions of web service '{name}' version '{version}'",
            scope="service",
            subject=f"Web service '{name}' version '{version}'",
        )
        answer = yield from self.auth.exchange(spec)
        ids = answer_list(answer.value, f"GET {spec.path}")
        if not all(isinstance(i, str) for i in ids):
            raise MalformedResponseError(
                f"The server's answer to GET {spec.path} is not a list of execution ids: {str(ids)[:200]}."
            )
        return ids

    def start_batch(
        self,
        name: str,
        version: str,
        records: RecordsInput,
        parallel_count: int,
        service: WebService | None,
        extra_columns: ExtraColumns,
    ) -> Flow[str]:
        """Check the records, start an execution; never a second one silently (see the hook's docstring)."""
        if (
            isinstance(parallel_count, bool)
            or not isinstance(parallel_count, int)
            or not 1 <= parallel_count <= MAX_PARALLEL_COUNT
        ):
            raise MLServerConfigError(
                f"parallel_count must be a whole number from 1 to {MAX_PARALLEL_COUNT} (the server's maximum "
                f"threads per batch execution), not {parallel_count!r}."
            )
        known = service or (yield from self.get_service(name, version))
        from airflow_mlserver.client.records import prepare_records

        body = _encode_records(prepare_records(records, known, extra_columns))
        before = set((yield from self.list_batch_executions(name, version)))
        spec = Spec(
            "POST",
            batch_path(name, version),
            f"start a batch of web service '{name}' version '{version}'",
            params=(("parallelCount", str(parallel_count)),),
            body=body,
            idempotent=False,
            scope="service",
            subject=f"Web service '{name}' version '{version}'",
        )
        reason = ""
        for _ in range(self.settings.max_retries + 1):
            try:
                answer = yield from self.auth.exchange(spec)
                return start_answer_execution_id(answer.value)
            except AmbiguousSend as exc:
                reason = exc.reason
            # The server may or may not have started an execution: look before sending again.
            new: set[str] = set()
            for wait in (0.0, min(self.settings.timeout, 5.0)):
                if wait:
                    yield Sleep(wait)
                new = set((yield from self.list_batch_executions(name, version))) - before
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
        check_execution_id(execution_id)
        spec = Spec(
            "DELETE",
            batch_path(name, version, execution_id),
            f"cancel batch execution '{execution_id}'",
            scope="execution",
            subject=f"Batch execution '{execution_id}' of web service '{name}' version '{version}'",
        )
        answer = yield from self.auth.exchange(spec)
        if isinstance(answer.value, dict) and "state" in answer.value:
            return BatchStatus.from_api(answer.value, execution_id, name, version)
        return (yield from self.get_batch(name, version, execution_id, False))

    def list_artifacts(self, name: str, version: str, execution_id: str, index: int) -> Flow[list[str]]:
        check_execution_id(execution_id)
        check_index(index)
        path = f"{batch_path(name, version, execution_id)}/{index}/files"
        spec = Spec(
            "GET",
            path,
            f"list the artifacts of record {index}",
            scope="artifact",
            subject=f"Record {index} of batch execution '{execution_id}'",
        )
        answer = yield from self.auth.exchange(spec)
        return [str(f) for f in answer_list(answer.value, f"GET {path}")]


# -- request specs shared by flows and the sync side's streamed reads -----------------------------------------


def batch_path(name: str, version: str, execution_id: str | None = None) -> str:
    path = f"/api/{quote(name)}/{quote(version)}/batch"
    return path if execution_id is None else f"{path}/{quote(execution_id)}"


def batch_spec(name: str, version: str, execution_id: str, partial: bool, read: ReadMode) -> Spec:
    """``GET`` of one execution: a status poll (``batch_head``), all results, or their stream."""
    check_execution_id(execution_id)
    return Spec(
        "GET",
        batch_path(name, version, execution_id),
        f"get batch execution '{execution_id}'",
        params=(("showPartialResults", "true" if partial else "false"),),
        read=read,
        scope="execution",
        subject=f"Batch execution '{execution_id}' of web service '{name}' version '{version}'",
    )


def artifact_spec(name: str, version: str, execution_id: str, index: int, file_name: str) -> Spec:
    """The streamed ``GET`` of one artifact; refuses a name that is not a plain file name."""
    check_execution_id(execution_id)
    check_index(index)
    if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", ".."):
        raise MLServerConfigError(
            f"Artifact name {file_name!r} is not a plain file name: give one from list_artifacts()."
        )
    return Spec(
        "GET",
        f"{batch_path(name, version, execution_id)}/{index}/files/{quote(file_name)}",
        f"read artifact '{file_name}'",
        read="stream",
        scope="artifact",
        subject=f"Artifact '{file_name}' of record {index} of batch execution '{execution_id}'",
    )


def check_execution_id(execution_id: str) -> None:
    if not isinstance(execution_id, str) or not execution_id.strip():
        raise MLServerConfigError(
            f"Batch execution id must be a non-empty string, not {execution_id!r}: use the id start_batch() answered."
        )


def check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise MLServerConfigError(
            f"Record index must be a whole number of at least 0 (indexes count from 0), not {index!r}."
        )


def _encode_records(records: list[dict[str, Any]]) -> bytes:
    try:
        return json.dumps(records, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise RecordValidationError(f"The records cannot be sent as JSON: {exc}.") from None
