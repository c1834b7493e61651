"""The artifacts operator's arguments: their defaults and limits, and the check of each one.

Every argument is checked where it is written (at construction; a templated one, or an XComArg, right after it
renders), with the checks of :mod:`~airflow_mlserver.operators.arguments` and the artifact-specific ones
(execution ids, record selections, path templates, file names, the destination).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

from airflow_mlserver.exceptions import OperatorArgumentError
from airflow_mlserver.operators.arguments import (
    Check,
    flag,
    has_template,
    optional,
    seconds,
    segment,
    text,
    whole_number,
)
from airflow_mlserver.operators.artifacts.destination import (
    dest_check,
    destination_path,
    destination_uri,
)
from airflow_mlserver.operators.artifacts.names import (
    file_names_check,
    indexes_check,
    manifest_template_check,
    path_template_check,
)
from airflow_mlserver.operators.artifacts.records import execution_ids_check

#: Where artifacts and the manifest go by default when one execution (``execution_id``) is copied.
DEFAULT_PATH_TEMPLATE = "{execution_id}/{index}/{file_name}"
DEFAULT_MANIFEST_TEMPLATE = "{execution_id}/manifest.json"
#: ... and when a batch task's executions (``execution_ids``) are: by record number, as in the results file.
TASK_PATH_TEMPLATE = "{record}/{file_name}"
TASK_MANIFEST_TEMPLATE = "manifest.json"
#: The most transfers at a time (each a thread with its own connection and two ``chunk_size`` buffers).
MAX_CONCURRENCY = 64
#: The largest ``chunk_size``: two buffers of it per transfer stay in memory.
MAX_CHUNK_SIZE = 64 * 1024 * 1024

_CONN_ID = "an Airflow connection id"
_ARGUMENT_CHECKS: dict[str, Check] = {
    "service_name": segment("the name of a published web service"),
    "service_version": segment("the web service's version, e.g. '1.0'"),
    "execution_id": optional(segment("a batch execution id, e.g. one of the batch operator's execution_ids")),
    "execution_ids": optional(execution_ids_check),
    "dest": dest_check,
    "indexes": indexes_check,
    "file_names": file_names_check,
    "path_template": path_template_check,
    "max_concurrency": whole_number(1, MAX_CONCURRENCY, "transfers at a time"),
    "overwrite": flag(),
    "wait_for_completion": flag(),
    "poll_interval": seconds(),
    "timeout": optional(seconds()),
    "unreachable_timeout": seconds(),
    "fail_on_refused": flag(),
    "transfer_retries": whole_number(0, 100, "further attempts of a broken transfer"),
    "chunk_size": whole_number(4096, MAX_CHUNK_SIZE, "bytes per read and write"),
    "mlserver_conn_id": text(_CONN_ID),
    "dest_conn_id": optional(text(_CONN_ID)),
}


def argument_checks(one_execution: bool) -> dict[str, Check]:
    """Each argument's check; the manifest may name the execution only when there is one."""
    return {**_ARGUMENT_CHECKS, "manifest_template": manifest_template_check(one_execution)}


def default_templates(one_execution: bool) -> tuple[str, str]:
    """The default ``path_template`` and ``manifest_template``: by execution and index for one execution, by
    record number (as in the results file) for a batch task's executions."""
    if one_execution:
        return DEFAULT_PATH_TEMPLATE, DEFAULT_MANIFEST_TEMPLATE
    return TASK_PATH_TEMPLATE, TASK_MANIFEST_TEMPLATE


def check_one_source(execution_id: Any, execution_ids: Any) -> None:
    """Exactly one of ``execution_id`` and ``execution_ids`` is given."""
    if (execution_id is None) == (execution_ids is None):
        raise OperatorArgumentError(
            "execution_ids" if execution_ids is not None else "execution_id",
            execution_ids if execution_ids is not None else execution_id,
            "give execution_id (one execution) or execution_ids (a batch task's executions, e.g. "
            "score.output['execution_ids']), exactly one of the two",
        )


def outlets_with_dest(dest: Any, dest_conn_id: str | None, outlets: Any) -> list[Any]:
    """``outlets`` (the task's own, if any) and ``dest`` as an :class:`~airflow.sdk.Asset` (``dest_as_outlet``):
    a fixed ``dest`` only, a template's destination being known only once it renders."""
    if has_template(dest):
        raise OperatorArgumentError(
            "dest",
            dest,
            "give a fixed dest with dest_as_outlet=True, or pass outlets=[Asset(...)] yourself",
        )
    dest_check("dest", dest)
    return [*(outlets or []), Asset(destination_uri(destination_path(dest, dest_conn_id)))]
