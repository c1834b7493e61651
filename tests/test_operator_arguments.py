"""Every argument of the batch operator and the sensor is checked where it is written (``operators/arguments.py``).

At construction (so a DAG fails when it is parsed), unless it holds a template: then right after rendering, at
the top of ``execute`` (those cases run through ``dag.test()`` in ``tests/test_batch_operator.py``).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest

from airflow_mlserver.exceptions import MLServerConfigError, OperatorArgumentError
from airflow_mlserver.operators.arguments import has_template
from airflow_mlserver.operators.batch import MLServerBatchOperator
from airflow_mlserver.sensors.batch import MLServerBatchSensor

WHOLE_1_100 = "give a whole number from 1 to 100 (the server's maximum threads per batch execution)"
AT_LEAST_1 = "give a whole number of at least 1"
AT_LEAST_0 = "give a whole number of at least 0"
CHUNK = "give a whole number of at least 1 (records per execution; None for all in one)"
DURATION = "give a finite number of seconds above 0, or a timedelta"
DURATION_0 = "give a finite number of seconds of 0 or more, or a timedelta"
SEGMENT = "(non-empty text without '/', '\\' or control characters, and not '.' or '..')"
SERVICE = f"give the name of a published web service {SEGMENT}"
CONN = "give an Airflow connection id"
RECORDS = (
    "give a DataFrame, a list of dicts, a dict of columns (at least one record), or the path or URI of a CSV, TSV, "
    "Parquet or JSON-lines file"
)
FLAG = "give True or False"


def _operator(**kwargs: Any) -> MLServerBatchOperator:
    arguments: dict[str, Any] = {"task_id": "t", "service_name": "scorer", "records": [{"x": 1.0}], **kwargs}
    return MLServerBatchOperator(**arguments)


def _refused(make: Any, **kwargs: Any) -> OperatorArgumentError:
    with pytest.raises(OperatorArgumentError) as raised:
        make(**kwargs)
    assert isinstance(raised.value, MLServerConfigError) and isinstance(raised.value, ValueError)
    return raised.value


# the kinds of the issue, several cases each: (argument, value, what the message says to give)
WHOLE_NUMBERS = [
    ("parallel_count", "10", WHOLE_1_100),
    ("parallel_count", 10.0, WHOLE_1_100),
    ("parallel_count", True, WHOLE_1_100),
    ("parallel_count", 0, WHOLE_1_100),
    ("parallel_count", 101, WHOLE_1_100),
    ("chunk_size", 2.5, CHUNK),
    ("chunk_size", "7", CHUNK),
    ("chunk_size", 0, CHUNK),
    ("max_active_executions", 1.0, AT_LEAST_1),
    ("max_active_executions", -3, AT_LEAST_1),
    ("max_failed_records", "0", AT_LEAST_0),
    ("max_failed_records", -1, AT_LEAST_0),
    ("max_failed_records", 0.5, AT_LEAST_0),
]
DURATIONS = [
    ("poll_interval", -1, DURATION),
    ("poll_interval", 0, DURATION),
    ("poll_interval", math.inf, DURATION),
    ("poll_interval", math.nan, DURATION),
    ("poll_interval", "10", DURATION),
    ("poll_interval", timedelta(seconds=-5), DURATION),
    ("timeout", -5, DURATION),
    ("timeout", math.inf, DURATION),
    ("timeout", 0, DURATION),
    ("timeout", "1h", DURATION),
    ("unreachable_timeout", 0, DURATION),
    ("unreachable_timeout", -60, DURATION),
    ("unreachable_timeout", None, DURATION),
    ("unreachable_timeout", math.nan, DURATION),
    ("unreachable_timeout", "30m", DURATION),
    ("unreachable_timeout", timedelta(0), DURATION),
]
NAMES = [
    ("service_name", "", SERVICE),
    ("service_name", "   ", SERVICE),
    ("service_name", None, SERVICE),
    ("service_name", "tx/../other", SERVICE),
    ("service_name", "..", SERVICE),
    ("service_version", "", f"give a version of the service, or None for its latest {SEGMENT}"),
    ("service_version", "v1/batch", f"give a version of the service, or None for its latest {SEGMENT}"),
    ("service_version", 1.0, f"give a version of the service, or None for its latest {SEGMENT}"),
    ("mlserver_conn_id", "", CONN),
    ("mlserver_conn_id", None, CONN),
    ("records_conn_id", " ", CONN),
    ("output_conn_id", "conn\nid", CONN),
]
FORMATS_AND_CHOICES = [
    (
        "records_format",
        "xlsx",
        "give 'csv', 'tsv', 'parquet' or 'jsonl' (or None, to read it from the file's suffix)",
    ),
    (
        "records_format",
        "",
        "give 'csv', 'tsv', 'parquet' or 'jsonl' (or None, to read it from the file's suffix)",
    ),
    (
        "records_format",
        3,
        "give 'csv', 'tsv', 'parquet' or 'jsonl' (or None, to read it from the file's suffix)",
    ),
    ("output_format", "xlsx", "give 'parquet' or 'csv'"),
    ("output_format", "PARQUET ", "give 'parquet' or 'csv'"),
    ("extra_columns", "drops", "give 'keep', 'ignore' or 'error'"),
    ("extra_columns", None, "give 'keep', 'ignore' or 'error'"),
    ("deferrable", "false", FLAG),
    ("cancel_on_kill", None, FLAG),
    ("return_results", 1, FLAG),
]
RECORDS_CASES = [
    ("records", "", RECORDS),
    ("records", [], RECORDS),
    ("records", [1, 2], RECORDS),
    ("records", [{"x": 1.0}, "x=2"], RECORDS),
    ("records", 42, RECORDS),
    ("records", pd.DataFrame(), RECORDS),
    ("records", {}, RECORDS),
    ("output_path", "", "give the path or URI of the results file, or None to write none"),
    ("output_path", 3.5, "give the path or URI of the results file, or None to write none"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argument", "value", "fix"), WHOLE_NUMBERS + DURATIONS + NAMES + FORMATS_AND_CHOICES + RECORDS_CASES
)
def test_a_bad_argument_of_the_batch_operator_fails_when_the_dag_is_parsed(
    argument: str, value: Any, fix: str
) -> None:
    error = _refused(_operator, **{argument: value})
    assert str(error) == f"Argument {argument} is {value!r}: {fix}."
    assert error.argument == argument


@pytest.mark.parametrize(
    ("records", "records_format"),
    [
        ("s3://bucket/cars", None),
        ("file:///data/cars.xlsx", None),
        ("/data/cars.csv.bak", None),
        ("cars", None),
    ],
)
def test_a_records_file_whose_format_nothing_tells_is_refused(
    records: str, records_format: str | None
) -> None:
    error = _refused(_operator, records=records, records_format=records_format)
    assert str(error) == (
        f"Argument records is {records!r}: give a file whose name ends in .csv, .tsv, .parquet or .jsonl (or .json, "
        ".ndjson, .tab, .pq, each also .gz), or give records_format."
    )


@pytest.mark.parametrize(
    ("records", "records_format"),
    [("s3://bucket/cars", "csv"), ("s3://bucket/cars.TSV", None), ("/data/cars.jsonl.gz", None),
     ("file:///data/cars", ".Parquet"), ("cars.ndjson", None)],
)  # fmt: skip
def test_a_records_file_whose_format_is_told_is_accepted(records: str, records_format: str | None) -> None:
    assert _operator(records=records, records_format=records_format).records == records


@pytest.mark.parametrize(
    ("argument", "uri", "shown"),
    [
        ("output_path", "s3://AKIA:wJalrXUtnFEMI@bucket/scores.parquet", "s3://***@bucket/scores.parquet"),
        ("output_path", "abfs://user:pa:ss@container/x.csv", "abfs://***@container/x.csv"),
        ("records", "https://me:hunter2@example.com/cars.csv", "https://***@example.com/cars.csv"),
    ],
)
def test_credentials_in_a_uri_are_refused_and_never_shown(argument: str, uri: str, shown: str) -> None:
    error = _refused(_operator, **{argument: uri})
    assert str(error) == (
        f"Argument {argument} is {shown!r}: give the URI without credentials, and the store's Airflow connection "
        "(with them) as the conn_id argument beside it."
    )
    secret = uri.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert secret not in repr(error.__dict__) and secret not in str(error)


def test_a_long_value_is_cut_to_200_characters_with_its_length() -> None:
    error = _refused(_operator, service_name="x" * 30_000 + "/")
    assert str(error) == f"Argument service_name is '{'x' * 200}…' (30,001 characters): {SERVICE}."


def test_good_arguments_are_kept_as_given_or_as_seconds() -> None:
    operator = _operator(
        parallel_count=100, chunk_size=None, poll_interval=timedelta(milliseconds=500), timeout=timedelta(hours=1),
        records=pd.DataFrame({"x": [1.0]}), output_path="s3://bucket/out.parquet", records_format=None,
    )  # fmt: skip
    assert (operator.poll_interval, operator.batch_timeout, operator.parallel_count) == (0.5, 3600.0, 100)
    assert operator.unreachable_timeout == 1800.0  # 30 minutes by default
    assert _operator(unreachable_timeout=timedelta(minutes=2)).unreachable_timeout == 120.0


@pytest.mark.parametrize(
    "arguments",
    [
        {"service_name": "{{ params.service }}"},
        {"service_version": "{{ params.version }}"},
        {"records": "{{ params.records }}"},
        {"records": "s3://bucket/{{ ds }}/cars"},  # no suffix, but the template may render one
        {"records": [{"x": "{{ params.x }}"}]},
        {"output_path": "{{ params.output }}"},
        {"mlserver_conn_id": "{% if params.prod %}prod{% else %}dev{% endif %}"},
    ],
)
def test_a_templated_argument_waits_for_its_rendering(arguments: dict[str, Any]) -> None:
    operator = _operator(**arguments)
    name, value = next(iter(arguments.items()))
    assert getattr(operator, name) == value


def test_an_xcomarg_waits_for_its_rendering_and_is_then_checked() -> None:
    """``service_version=publish.output["service_version"]``: scoring with what a task just published."""
    from airflow.sdk import DAG, task

    with DAG("mlserver_test_xcomarg_version", schedule=None):

        @task
        def publish() -> dict[str, str]:
            return {"service_version": "v2"}

        version = publish()["service_version"]
        operator = MLServerBatchOperator(
            task_id="score", service_name="svc", service_version=version, records=[{"x": 1.0}]
        )
    assert operator.service_version is version
    operator.service_version = "v 2/3"  # what it rendered to: refused, with its own class, "once rendered"
    from airflow_mlserver.operators.arguments import check_arguments
    from airflow_mlserver.operators.batch.arguments import ARGUMENT_CHECKS

    with pytest.raises(OperatorArgumentError, match="once rendered"):
        check_arguments(operator, ARGUMENT_CHECKS, rendered=True)


@pytest.mark.parametrize("argument", ["parallel_count", "poll_interval", "output_format", "deferrable"])
def test_a_template_in_an_argument_that_is_not_templated_is_refused(argument: str) -> None:
    """Only template_fields render: elsewhere the template text is the value, and it is not a valid one."""
    assert _refused(_operator, **{argument: "{{ params.x }}"}).argument == argument


def test_has_template() -> None:
    assert [has_template(v) for v in ("{{ ds }}", "{% raw %}", "{# c #}", "plain", ["a", "{{ x }}"], {"k": "{{ x }}"},
                                      3, None)] == [True, True, True, False, True, True, False, False]  # fmt: skip


# --- the sensor ------------------------------------------------------------------------------------------------


def _sensor(**kwargs: Any) -> MLServerBatchSensor:
    arguments: dict[str, Any] = {
        "task_id": "s", "service_name": "scorer", "service_version": "v1", "execution_id": "e-1", **kwargs
    }  # fmt: skip
    return MLServerBatchSensor(**arguments)


EXECUTION = f"give the id of a batch execution of that service version {SEGMENT}"


@pytest.mark.parametrize(
    ("argument", "value", "fix"),
    [
        ("execution_id", "", EXECUTION),
        ("execution_id", None, EXECUTION),
        ("execution_id", "e/1", EXECUTION),
        ("execution_id", ["e-1"], EXECUTION),
        ("service_name", "", SERVICE),
        ("service_name", "a\\b", SERVICE),
        ("service_version", "", f"give the version of the service {SEGMENT}"),
        ("service_version", None, f"give the version of the service {SEGMENT}"),
        ("mlserver_conn_id", "", CONN),
        ("deferrable", "yes", FLAG),
        ("poke_interval", -1, DURATION),
        ("poke_interval", 0, DURATION),
        ("poke_interval", math.inf, DURATION),
        ("poke_interval", "5", DURATION),
        ("timeout", -1, DURATION_0),
        ("timeout", math.nan, DURATION_0),
        ("timeout", math.inf, DURATION_0),
        ("timeout", "60", DURATION_0),
        ("unreachable_timeout", 0, DURATION),
        ("unreachable_timeout", None, DURATION),
        ("unreachable_timeout", math.inf, DURATION),
    ],
)
def test_a_bad_argument_of_the_sensor_fails_when_the_dag_is_parsed(
    argument: str, value: Any, fix: str
) -> None:
    error = _refused(_sensor, **{argument: value})
    assert str(error) == f"Argument {argument} is {value!r}: {fix}."


def test_the_sensor_keeps_good_durations_and_templates() -> None:
    sensor = _sensor(poke_interval=timedelta(seconds=2), timeout=0, execution_id="{{ params.execution_id }}")
    assert (sensor.poke_interval, sensor.timeout, sensor.execution_id) == (
        2.0,
        0.0,
        "{{ params.execution_id }}",
    )
    assert _sensor().unreachable_timeout == 1800.0  # 30 minutes by default
    assert _sensor(unreachable_timeout=timedelta(seconds=90)).unreachable_timeout == 90.0
