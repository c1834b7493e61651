"""The services operators' arguments: the check of each, by attribute, and the checks between arguments.

Every argument is checked where it is written (at construction; a templated one, or an XComArg, right after it
renders), with the checks of :mod:`~airflow_mlserver.operators.arguments` made specific: each problem is one
class of :mod:`airflow_mlserver.exceptions` (all :class:`~airflow_mlserver.exceptions.ServiceArgumentError`).
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from typing import Any

from airflow_mlserver.client.parameters import PARAMETER_TYPES
from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.exceptions import (
    OperatorArgumentError,
    ServiceArgumentError,
    ServiceCodeArgumentError,
    ServiceModelArgumentError,
    ServiceParameterArgumentError,
    ServiceRuntimeTypeError,
    ServiceVersionSelectionError,
)
from airflow_mlserver.operators.arguments import (
    Check,
    choice,
    has_template,
    optional,
    segment,
    text,
    uri,
    whole_number,
)
from airflow_mlserver.operators.services.plan import IF_EXISTS

#: The runtimes a service is published to, as the contract spells them (any case is taken).
RUNTIMES = ("Python", "R")
_CONNECTION_ID = "an Airflow connection id"
_TYPES = ", ".join(map(repr, PARAMETER_TYPES))


def specific(error: type[OperatorArgumentError], check: Check) -> Check:
    """``check``, its refusal raised as ``error``."""

    def specific_check(name: str, value: Any) -> Any:
        try:
            return check(name, value)
        except OperatorArgumentError as exc:
            raise error(exc.argument, exc.value, exc.fix) from None

    return specific_check


def runtime_type_check(name: str, value: Any) -> str:
    """``Python`` or ``R``, in any case; answers the contract's spelling."""
    for runtime in RUNTIMES:
        if isinstance(value, str) and value.strip().lower() == runtime.lower():
            return runtime
    raise ServiceRuntimeTypeError(
        name, value, "give 'Python' or 'R' (the runtimes a service is published to)"
    )


def code_check(name: str, value: Any) -> str:
    """Code: text that is not blank."""
    if not isinstance(value, str) or not value.strip():
        raise ServiceCodeArgumentError(
            name, value, "give the service's code as text (or its file, as *_path)"
        )
    return value


def _valid_variable(value: Any) -> bool:
    """A name a Python or R service can bind: Python's identifiers (R's names include them)."""
    return isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)


def parameters_check(name: str, value: Any) -> dict[str, str]:
    """Declared inputs or outputs: ``{variable name: type}`` with the contract's types; None for none."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ServiceParameterArgumentError(
            name, value, f"give a dict of variable name to type, e.g. {{'x': 'numeric'}}, the types {_TYPES}"
        )
    for variable, kind in value.items():
        if not _valid_variable(variable):
            raise ServiceParameterArgumentError(
                f"{name}'s name", variable, "give a variable name (letters, digits and _, not first a digit)"
            )
        if kind not in PARAMETER_TYPES:
            raise ServiceParameterArgumentError(
                f"{name}[{variable!r}]", kind, f"give one of the types {_TYPES}"
            )
    return dict(value)


def output_file_names_check(name: str, value: Any) -> list[str]:
    """A list of plain file names the service writes (no folder, no control characters)."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ServiceParameterArgumentError(name, value, "give a list of file names, e.g. ['plot.png']")
    for file_name in value:
        if not valid_segment(file_name):
            raise ServiceParameterArgumentError(
                f"{name}'s item",
                file_name,
                "give a plain file name (non-empty, without '/', '\\' or control characters, not '.' or '..')",
            )
    return list(value)


def _model_names(name: str, value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise ServiceModelArgumentError(
            name, value, f"give a non-empty dict of variable name to {what}, or None"
        )
    for variable in value:
        if not _valid_variable(variable):
            raise ServiceModelArgumentError(
                f"{name}'s name", variable, "give the variable name the service code uses for the object"
            )
    return value


def model_objects_check(name: str, value: Any) -> dict[str, Any]:
    """``{variable name: object}``: a Python service's objects, an R service's RDS bytes."""
    return dict(_model_names(name, value, "object (RDS bytes for an R service)"))


def model_paths_check(name: str, value: Any) -> dict[str, Any]:
    """``{variable name: path or URI}`` of files holding model objects."""
    paths = _model_names(name, value, "path or URI (e.g. 'file:///models/model.pkl')")
    what = "the path or URI of the file holding the object"
    return {variable: specific(ServiceModelArgumentError, uri(what))(f"{name}[{variable!r}]", path)
            for variable, path in paths.items()}  # fmt: skip


def description_check(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ServiceArgumentError(name, value, "give text, or None")
    return value


PUBLISH_CHECKS: dict[str, Check] = {
    "service_name": specific(ServiceArgumentError, segment("the name of the web service")),
    "service_version": specific(
        ServiceArgumentError,
        optional(segment("the version to publish, e.g. 'v1', or None for the server to pick")),
    ),
    "code": optional(code_check),
    "code_path": optional(specific(ServiceCodeArgumentError, uri("the path or URI of the code's file"))),
    "init_code": optional(code_check),
    "init_code_path": optional(
        specific(ServiceCodeArgumentError, uri("the path or URI of the init code's file"))
    ),
    "inputs": parameters_check,
    "outputs": parameters_check,
    "output_file_names": output_file_names_check,
    "description": optional(description_check),
    "operation_id": optional(specific(ServiceArgumentError, segment("the consume function's name"))),
    "runtime_type": runtime_type_check,
    "model_objects": optional(model_objects_check),
    "model_paths": optional(model_paths_check),
    "if_exists": specific(ServiceArgumentError, choice(*IF_EXISTS)),
    "mlserver_conn_id": specific(ServiceArgumentError, text(_CONNECTION_ID)),
    "code_conn_id": optional(specific(ServiceArgumentError, text(_CONNECTION_ID))),
    "model_conn_id": optional(specific(ServiceArgumentError, text(_CONNECTION_ID))),
}

DELETE_CHECKS: dict[str, Check] = {
    "service_name": specific(ServiceArgumentError, segment("the name of the web service")),
    "service_version": optional(
        specific(ServiceVersionSelectionError, segment("the version to delete, e.g. 'v1'"))
    ),
    "keep_newest": optional(
        specific(
            ServiceVersionSelectionError,
            whole_number(1, why="the newest versions to keep; to delete one version give service_version"),
        )
    ),
    "mlserver_conn_id": specific(ServiceArgumentError, text(_CONNECTION_ID)),
}


def _given(value: Any) -> bool:
    return value is not None


def check_code_sources(code: Any, code_path: Any, init_code: Any, init_code_path: Any) -> None:
    """Exactly one of ``code`` and ``code_path``; at most one of ``init_code`` and ``init_code_path``."""
    if _given(code) == _given(code_path):
        raise ServiceCodeArgumentError(
            "code_path" if _given(code_path) else "code",
            code_path if _given(code_path) else code,
            "give the service's code as code (text) or as code_path (its file in object storage), exactly one",
        )
    if _given(init_code) and _given(init_code_path):
        raise ServiceCodeArgumentError(
            "init_code_path", init_code_path, "give init_code (text) or init_code_path (its file), not both"
        )


def check_model_names(model_objects: Any, model_paths: Any, rendered: bool = False) -> None:
    """``model_objects`` and ``model_paths`` name different variables (when both are known)."""
    known = [
        value
        for value in (model_objects, model_paths)
        if isinstance(value, Mapping) and not has_template(dict(value))
    ]
    if len(known) < 2:
        return
    both = sorted(set(known[0]) & set(known[1]))
    if both:
        raise ServiceModelArgumentError(
            "model_paths",
            both,
            "name each model object once, in model_objects or in model_paths",
            rendered,
        )


def check_selection(service_version: Any, keep_newest: Any) -> None:
    """The delete operator is given exactly one of ``service_version`` and ``keep_newest``."""
    if _given(service_version) == _given(keep_newest):
        raise ServiceVersionSelectionError(
            "keep_newest" if _given(keep_newest) else "service_version",
            keep_newest if _given(keep_newest) else service_version,
            "give service_version (delete that version) or keep_newest (delete all but the newest N versions), "
            "exactly one of the two",
        )
