"""Publish a web service from a DAG, once: a rerun with the same content publishes nothing.

The server never gives a service's code back, so the content's digest travels in the service's description
(see :mod:`~airflow_mlserver.operators.services.plan`), where the next run reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.words import first_few, plural
from airflow_mlserver.exceptions import ServiceVersionConflictError
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.operators.arguments import check_arguments
from airflow_mlserver.operators.links import MLServerBatchLink
from airflow_mlserver.operators.services.arguments import (
    PUBLISH_CHECKS,
    check_code_sources,
    check_model_names,
)
from airflow_mlserver.operators.services.plan import Action, content_digest, decide_publish, described
from airflow_mlserver.operators.services.sources import model_objects, read_code

if TYPE_CHECKING:
    from airflow.sdk import Context


class MLServerPublishServiceOperator(BaseOperator):
    """Publish a web service version (Python or R), with its model objects; a rerun publishes nothing twice.

    The code is given as text (``code``) or as a file in object storage (``code_path``), and likewise its init
    code, run once before the first record. Model objects become variables of the service code: given as objects
    (``model_objects``, e.g. from an upstream task) or as files (``model_paths``, read through
    :class:`~airflow.sdk.ObjectStoragePath`): an R service's are RDS files (``saveRDS``), a Python service's the
    bytes ``pickle`` or ``dill`` wrote (unpickled here, so only files you trust).

    **Once only.** What a publish sends (code, init code, inputs, outputs, output file names, operation id,
    runtime, each model object's bytes) has a content digest, the first 16 hex digits of a SHA-256, kept at the
    end of the version's description as ``[content sha256:<digest>]`` after your ``description``. Before
    publishing, the task reads the service's versions: a ``service_version`` that exists with the same digest is
    not published again; one that exists with other content (or with no digest) fails the task with
    :class:`~airflow_mlserver.exceptions.ServiceVersionConflictError` (no retries), unless ``if_exists`` says to
    replace it or keep it. With ``service_version=None`` the server picks a new version, unless the service's
    newest version (by creation time) has the same digest: that one is reused.

    Returns (XCom) ``{"service_name", "service_version", "published", "digest"}``, each key also pushed as an
    XCom of its own (``multiple_outputs``): a batch task takes the version with
    ``service_version="{{ ti.xcom_pull(task_ids='publish', key='service_version') }}"``. ``published`` is False
    when nothing was published; ``digest`` is the one the version carries (None for a version kept with
    ``if_exists="skip"`` that carries none).

    Every argument is checked at construction (a templated one, or an XComArg, right after it renders), each
    problem a :class:`~airflow_mlserver.exceptions.ServiceArgumentError` of its own kind.

    :param service_name: Name of the web service. (templated)
    :param service_version: The version to publish, or None for the server to pick one. (templated)
    :param code: The code run for each record. Jinja renders it: write ``{% raw %}...{% endraw %}`` around code
        holding ``{{``, ``{%`` or ``{#``, or give ``code_path``. Give it or ``code_path``. (templated)
    :param code_path: Path or URI of the code's file (UTF-8), e.g. ``file:///dags/score.py`` or
        ``s3://bucket/score.R``; its content is not rendered. (templated)
    :param init_code: Code run once before the first record (rendered, as ``code``). (templated)
    :param init_code_path: Path or URI of the init code's file; give at most one of the two. (templated)
    :param inputs: Declared inputs, ``{name: type}`` in record order, the types ``integer``, ``numeric``,
        ``character``, ``logical``, ``vector``, ``matrix``, ``data.frame``; None for none. (templated)
    :param outputs: Declared outputs, likewise. (templated)
    :param output_file_names: Files the code writes that come back as artifacts. (templated)
    :param description: Free text; the content marker is added at its end. (templated)
    :param operation_id: The consume function's name (``operationId``).
    :param runtime_type: ``"Python"`` (default) or ``"R"``, in any case.
    :param model_objects: ``{variable name: object}``: a Python service's objects (serialized with dill), an R
        service's RDS bytes; e.g. an upstream task's output. (templated)
    :param model_paths: ``{variable name: path or URI}`` of files holding model objects. (templated)
    :param if_exists: What to do when ``service_version`` exists with other content: ``"fail_if_different"``
        (default: fail), ``"replace"`` (publish over it) or ``"skip"`` (keep it as it is). The same content is
        never published again, whatever this says.
    :param mlserver_conn_id: The Machine Learning Server connection. (templated)
    :param code_conn_id: The Airflow connection of the store holding ``code_path`` and ``init_code_path``.
        (templated)
    :param model_conn_id: The Airflow connection of the store holding ``model_paths``. (templated)
    """

    operator_extra_links = (MLServerBatchLink(),)  # its tab says what it did to the service
    template_fields: Sequence[str] = (
        "service_name",
        "service_version",
        "code",
        "code_path",
        "init_code",
        "init_code_path",
        "inputs",
        "outputs",
        "output_file_names",
        "description",
        "model_objects",
        "model_paths",
        "mlserver_conn_id",
        "code_conn_id",
        "model_conn_id",
    )
    ui_color = "#fdf1e3"

    def __init__(
        self,
        *,
        service_name: str,
        service_version: str | None = None,
        code: str | None = None,
        code_path: str | ObjectStoragePath | None = None,
        init_code: str | None = None,
        init_code_path: str | ObjectStoragePath | None = None,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        output_file_names: Sequence[str] = (),
        description: str | None = None,
        operation_id: str | None = None,
        runtime_type: str = "Python",
        model_objects: Any = None,
        model_paths: Any = None,
        if_exists: str = "fail_if_different",
        mlserver_conn_id: str = MLServerHook.default_conn_name,
        code_conn_id: str | None = None,
        model_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        check_code_sources(code, code_path, init_code, init_code_path)
        self.service_name = service_name
        self.service_version = service_version
        self.code = code
        self.code_path = code_path
        self.init_code = init_code
        self.init_code_path = init_code_path
        self.inputs = inputs
        self.outputs = outputs
        self.output_file_names = output_file_names
        self.description = description
        self.operation_id = operation_id
        self.runtime_type = runtime_type
        self.model_objects = model_objects
        self.model_paths = model_paths
        self.if_exists = if_exists
        self.mlserver_conn_id = mlserver_conn_id
        self.code_conn_id = code_conn_id
        self.model_conn_id = model_conn_id
        self._check_arguments(rendered=False)

    def _check_arguments(self, rendered: bool) -> None:
        check_arguments(self, PUBLISH_CHECKS, rendered)
        check_model_names(self.model_objects, self.model_paths, rendered)

    @cached_property
    def hook(self) -> MLServerHook:
        return MLServerHook(mlserver_conn_id=self.mlserver_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        self._check_arguments(rendered=True)  # before anything is read or sent
        name = self.service_name
        code = (
            self.code if self.code is not None else read_code("code_path", self.code_path, self.code_conn_id)
        )
        init_code = self.init_code
        if self.init_code_path is not None:
            init_code = read_code("init_code_path", self.init_code_path, self.code_conn_id)
        objects = model_objects(self.runtime_type, self.model_objects, self.model_paths, self.model_conn_id)
        digest = content_digest(
            code=code,
            init_code=init_code,
            inputs=self.inputs,  # type: ignore[arg-type]  # a dict once checked
            outputs=self.outputs,  # type: ignore[arg-type]
            output_file_names=self.output_file_names,
            operation_id=self.operation_id,
            runtime_type=self.runtime_type,
            model_objects=objects.digested,
        )
        versions = self.hook.list_services()
        decision = decide_publish(name, self.service_version, digest, versions, self.if_exists)
        if decision.action is Action.CONFLICT:
            raise ServiceVersionConflictError(
                decision.reason, name, str(decision.version), digest, decision.found
            )
        if decision.action is Action.REUSE:
            self.log.info("Publishing nothing: %s", decision.reason)
            return _answer(name, str(decision.version), False, decision.found)
        self.log.info(
            "Publishing %s (%s, content sha256:%s%s): %s",
            f"web service {quoted(name)} version {quoted(decision.version)}"
            if decision.version
            else f"a new version of web service {quoted(name)}",
            self.runtime_type,
            digest,
            f", model objects {first_few(map(quoted, objects.to_publish))}" if objects.to_publish else "",
            decision.reason,
        )
        service = self.hook.publish_service(
            name,
            decision.version,
            code=code,
            inputs=self.inputs or {},
            outputs=self.outputs or {},
            init_code=init_code,
            output_file_names=self.output_file_names,
            operation_id=self.operation_id,
            description=described(self.description, digest),
            runtime_type=self.runtime_type,
            replace=decision.action is Action.REPLACE,
            model_objects=objects.to_publish or None,
        )
        self.log.info(
            "%s web service %s version %s (%s, %s)",
            "Replaced" if decision.action is Action.REPLACE else "Published",
            quoted(service.name),
            quoted(service.version),
            plural(len(service.inputs), "input"),
            plural(len(service.outputs), "output"),
        )
        return _answer(service.name, service.version, True, digest)


def _answer(name: str, version: str, published: bool, digest: str | None) -> dict[str, Any]:
    return {"service_name": name, "service_version": version, "published": published, "digest": digest}
