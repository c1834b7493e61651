"""The batch operator's arguments: the check of each, by attribute (see :mod:`~airflow_mlserver.operators.arguments`
for the checks and their messages)."""

from __future__ import annotations

from airflow_mlserver.executions.outage import DEFAULT_UNREACHABLE_TIMEOUT  # every wait's, and the operator's
from airflow_mlserver.operators.arguments import (
    Check,
    batch_records,
    choice,
    file_format,
    flag,
    optional,
    seconds,
    segment,
    text,
    uri,
    whole_number,
)

CONNECTION_ID = "an Airflow connection id"

#: The check of each argument, by attribute (``timeout`` is checked as it is read, into ``batch_timeout``, and
#: ``unreachable_timeout`` into seconds).
ARGUMENT_CHECKS: dict[str, Check] = {
    "service_name": segment("the name of a published web service"),
    "service_version": optional(segment("a version of the service, or None for its latest")),
    "records": batch_records,
    "records_format": optional(file_format),
    "records_conn_id": optional(text(CONNECTION_ID)),
    "output_path": optional(uri("the path or URI of the results file, or None to write none")),
    "output_format": choice("parquet", "csv"),
    "output_conn_id": optional(text(CONNECTION_ID)),
    "parallel_count": whole_number(1, 100, "the server's maximum threads per batch execution"),
    "chunk_size": optional(whole_number(1, why="records per execution; None for all in one")),
    "max_active_executions": whole_number(1),
    "extra_columns": choice("keep", "ignore", "error"),
    "max_failed_records": whole_number(0),
    "rescore_failed_records": whole_number(0, why="rounds of rescoring"),
    "poll_interval": seconds(),
    "deferrable": flag(),
    "cancel_on_kill": flag(),
    "return_results": flag(),
    "mlserver_conn_id": text(CONNECTION_ID),
}

__all__ = ["ARGUMENT_CHECKS", "CONNECTION_ID", "DEFAULT_UNREACHABLE_TIMEOUT"]
