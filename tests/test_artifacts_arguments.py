"""Every argument of the artifacts operator is checked where it is written (no server needed).

At construction, so that a bad DAG fails when it is parsed; an argument that holds a template (or an XComArg) is
checked right after it renders, at the top of ``execute``, before anything is sent or awaited. The checks are
those of ``operators/arguments.py`` plus the artifact-specific ones (execution ids, record selections, path
templates, file names, the destination).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_mlserver.exceptions import MLServerConfigError, OperatorArgumentError
from airflow_mlserver.operators.artifacts import (
    TASK_MANIFEST_TEMPLATE,
    TASK_PATH_TEMPLATE,
    MLServerArtifactsToObjectStorageOperator,
)

DEST = "file:///tmp/airflow-mlserver-artifact-arguments"
SEGMENT = "(non-empty text without '/', '\\' or control characters, and not '.' or '..')"
FLAG = "give True or False"
DURATION = "give a finite number of seconds above 0, or a timedelta"
CONN = "give an Airflow connection id"
CONCURRENCY = "give a whole number from 1 to 64 (transfers at a time)"
RETRIES = "give a whole number from 0 to 100 (further attempts of a broken transfer)"
CHUNK = "give a whole number from 4096 to 67108864 (bytes per read and write)"
RECORDS = (
    "give None for every record, record numbers (0-based, as in the results file) as a list or a range, or text "
    "such as '0-9,15'"
)
IDS = (
    "give the batch task's summary (score.output) or its execution_ids XCom (score.output['execution_ids']), a "
    "list per map index for a mapped task, or a list of execution ids"
)
ONE_OF_TWO = (
    "give execution_id (one execution) or execution_ids (a batch task's executions, e.g. "
    "score.output['execution_ids']), exactly one of the two"
)
FILES = "give None for every file, or file names and globs ('*.csv') without '/' or '\\'"
PLACES = "use only the placeholders {execution_id}, {index}, {record}, {file_name}, {service_name}, {service_version}"
DEST_WHAT = (
    "give an ObjectStoragePath or a URI such as 's3://bucket/prefix' or 'file:///data/out', with the store's "
    "credentials in an Airflow connection (dest_conn_id), never in the URI"
)
NO_CREDENTIALS = (
    "give the URI without credentials, and the store's Airflow connection (with them) as the conn_id argument "
    "beside it"
)


def _operator(**kwargs: Any) -> MLServerArtifactsToObjectStorageOperator:
    arguments: dict[str, Any] = {
        "task_id": "copy",
        "service_name": "scorer",
        "service_version": "1.0",
        "execution_id": "e1",
        "dest": DEST,
        **kwargs,
    }
    return MLServerArtifactsToObjectStorageOperator(**arguments)


def _refused(**kwargs: Any) -> str:
    """The message of the OperatorArgumentError that constructing the operator with ``kwargs`` raises."""
    with pytest.raises(OperatorArgumentError) as raised:
        _operator(**kwargs)
    assert isinstance(raised.value, MLServerConfigError) and isinstance(raised.value, ValueError)
    return str(raised.value)


# the kinds of the issue, several cases each: (arguments, what the message says after "Argument <name> is <value>: ")
NUMBERS_AND_FLAGS = [
    ({"max_concurrency": "4"}, CONCURRENCY),
    ({"max_concurrency": 4.0}, CONCURRENCY),
    ({"max_concurrency": True}, CONCURRENCY),
    ({"max_concurrency": 0}, CONCURRENCY),
    ({"max_concurrency": 65}, CONCURRENCY),
    ({"transfer_retries": "2"}, RETRIES),
    ({"transfer_retries": 1.5}, RETRIES),
    ({"transfer_retries": -1}, RETRIES),
    ({"transfer_retries": 101}, RETRIES),
    ({"chunk_size": 4096.0}, CHUNK),
    ({"chunk_size": "1MiB"}, CHUNK),
    ({"chunk_size": 100}, CHUNK),
    ({"chunk_size": 2**30}, CHUNK),
    ({"poll_interval": 0}, DURATION),
    ({"poll_interval": -1}, DURATION),
    ({"poll_interval": math.nan}, DURATION),
    ({"poll_interval": math.inf}, DURATION),
    ({"poll_interval": "10"}, DURATION),
    ({"timeout": -5}, DURATION),
    ({"timeout": math.nan}, DURATION),
    ({"timeout": math.inf}, DURATION),
    ({"timeout": timedelta(seconds=-1)}, DURATION),
    ({"unreachable_timeout": 0}, DURATION),
    ({"unreachable_timeout": None}, DURATION),
    ({"unreachable_timeout": math.inf}, DURATION),
    ({"unreachable_timeout": "30m"}, DURATION),
    ({"overwrite": "false"}, FLAG),
    ({"overwrite": 1}, FLAG),
    ({"wait_for_completion": "yes"}, FLAG),
    ({"fail_on_refused": None}, FLAG),
    ({"dest_as_outlet": "true"}, FLAG),
]
NAMES_AND_IDS = [
    ({"service_name": ""}, f"give the name of a published web service {SEGMENT}"),
    ({"service_name": "a/b"}, f"give the name of a published web service {SEGMENT}"),
    ({"service_version": ""}, f"give the web service's version, e.g. '1.0' {SEGMENT}"),
    ({"service_version": 1.0}, f"give the web service's version, e.g. '1.0' {SEGMENT}"),
    (
        {"execution_id": ""},
        f"give a batch execution id, e.g. one of the batch operator's execution_ids {SEGMENT}",
    ),
    (
        {"execution_id": "  "},
        f"give a batch execution id, e.g. one of the batch operator's execution_ids {SEGMENT}",
    ),
    (
        {"execution_id": ".."},
        f"give a batch execution id, e.g. one of the batch operator's execution_ids {SEGMENT}",
    ),
    (
        {"execution_id": "a\nb"},
        f"give a batch execution id, e.g. one of the batch operator's execution_ids {SEGMENT}",
    ),
    ({"execution_id": None}, ONE_OF_TWO),
    ({"execution_ids": ["e2"]}, ONE_OF_TWO),
    (
        {"execution_id": None, "execution_ids": []},
        f"{IDS}; this holds none (did the batch task run upstream?)",
    ),
    (
        {"execution_id": None, "execution_ids": [[], []]},
        f"{IDS}; this holds none (did the batch task run upstream?)",
    ),
    (
        {"execution_id": None, "execution_ids": ["e1", ""]},
        f"{IDS} ('' is not an execution id: non-empty text without '/', '\\' or control characters)",
    ),
    (
        {"execution_id": None, "execution_ids": ["e1", "e1"]},
        "give each execution once ('e1' is there twice, so its records would be numbered twice)",
    ),
    ({"execution_id": None, "execution_ids": "['e1',"}, f"{IDS} (the text is not a list)"),
    ({"execution_id": None, "execution_ids": [["e1"], 3]}, IDS),
    ({"execution_id": None, "execution_ids": {"total": 3}}, IDS),
    ({"execution_id": None, "execution_ids": [{"execution_ids": "e1"}]}, IDS),
    (
        {"execution_id": None, "execution_ids": {"execution_ids": ["e1"], "executions": [{"round": 1}]}},
        f"{IDS} (its executions line {{'round': 1}} is not the batch operator's)",
    ),
    (
        {
            "execution_id": None,
            "execution_ids": {
                "execution_ids": ["e1"],
                "executions": [{"execution_id": "r1", "round": 1, "records": "3-x"}],
            },
        },
        f"{IDS} (its executions line {{'execution_id': 'r1', 'round': 1, 'records': '3-x'}} is not the batch "
        "operator's)",
    ),
    (
        {
            "execution_id": None,
            "execution_ids": {
                "execution_ids": ["e1"],
                "executions": [{"execution_id": "e1", "round": 1, "records": "3"}],
            },
        },
        "give each execution once ('e1' is there twice, so its records would be numbered twice)",
    ),
    ({"execution_id": None, "execution_ids": 7}, IDS),
    ({"mlserver_conn_id": ""}, CONN),
    ({"mlserver_conn_id": "a\nb"}, CONN),
    ({"dest_conn_id": "  "}, CONN),
    ({"dest_conn_id": 3}, CONN),
]
SELECTIONS = [
    ({"indexes": "9-0"}, "write the range '9-0' low to high ('0-9'): backwards it selects nothing"),
    ({"indexes": "0-3,12-10"}, "write the range '12-10' low to high ('10-12'): backwards it selects nothing"),
    ({"indexes": range(5, 0)}, "give a range that selects records, low to high: range(low, high + 1)"),
    ({"indexes": range(3, 3)}, "give a range that selects records, low to high: range(low, high + 1)"),
    ({"indexes": range(9, 0, -1)}, "give a range that selects records, low to high: range(low, high + 1)"),
    ({"indexes": ""}, f"{RECORDS} (an empty part selects nothing)"),
    ({"indexes": "1,,2"}, f"{RECORDS} (an empty part selects nothing)"),
    ({"indexes": "a-b"}, f"{RECORDS} ('a-b' is not one)"),
    ({"indexes": "0-"}, f"{RECORDS} ('0-' is not one)"),
    ({"indexes": "1.5"}, f"{RECORDS} ('1.5' is not one)"),
    ({"indexes": -1}, f"{RECORDS} (-1 is not a record number)"),
    ({"indexes": [1.5]}, f"{RECORDS} (1.5 is not a record number)"),
    ({"indexes": [True]}, f"{RECORDS} (True is not a record number)"),
    ({"indexes": ["3"]}, f"{RECORDS} ('3' is not a record number)"),
    ({"indexes": 2.0}, RECORDS),
    ({"indexes": {"a": 1}}, RECORDS),
    ({"indexes": (i for i in range(3))}, RECORDS),
    ({"file_names": []}, f"{FILES} (an empty list selects nothing)"),
    (
        {"file_names": ["../x"]},
        f"{FILES} ('../x': it contains a path separator, which could place it outside its folder or the "
        "destination)",
    ),
    (
        {"file_names": "a/*.csv"},
        f"{FILES} ('a/*.csv': it contains a path separator, which could place it outside its folder or the "
        "destination)",
    ),
    ({"file_names": [""]}, f"{FILES} ('': it is empty)"),
    ({"file_names": ["ok.csv", 3]}, f"{FILES} (3: it is a int, not a string)"),
    ({"file_names": 3}, FILES),
]
TEMPLATES = [
    (
        {"path_template": "{index}"},
        "include {file_name}: without it, every artifact of a record lands on one path (e.g. '{record}/{file_name}')",
    ),
    (
        {"path_template": "{record}/out.bin"},
        "include {file_name}: without it, every artifact of a record lands on one path (e.g. '{record}/{file_name}')",
    ),
    ({"path_template": "{nope}/{file_name}"}, f"{PLACES} ({{nope}} is not one)"),
    ({"path_template": "{index.real}/{file_name}"}, f"{PLACES} ({{index.real}} is not one)"),
    ({"path_template": "{}/{file_name}"}, f"{PLACES} ({{}} is not one)"),
    (
        {"path_template": "{file_name"},
        "write each placeholder as {name} and a literal brace twice (expected '}' before end of string)",
    ),
    (
        {"path_template": "{file_name:d}"},
        "give format specs that fit the values (Unknown format code 'd' for object of type 'str'); {index} and "
        "{record} are whole numbers, the others text",
    ),
    (
        {"path_template": "../{file_name}"},
        "give a relative path of plain names below dest (filled in, its segment '..' is unsafe (it names a "
        "directory ('.' or '..'), which could escape the destination))",
    ),
    (
        {"path_template": "/abs/{file_name}"},
        "give a relative path of plain names below dest (filled in, it is absolute or has a backslash)",
    ),
    (
        {"path_template": "a//{file_name}"},
        "give a relative path of plain names below dest (filled in, its segment '' is unsafe (it is empty))",
    ),
    (
        {"path_template": ""},
        "give a path below dest, with placeholders among {execution_id}, {index}, {record}, {file_name}, "
        "{service_name}, {service_version}",
    ),
    (
        {"manifest_template": "{index}.json"},
        "use only the placeholders {execution_id}, {service_name}, {service_version} ({index} is not one)",
    ),
    (
        {"execution_id": None, "execution_ids": ["e1"], "manifest_template": "{execution_id}/m.json"},
        "use only the placeholders {service_name}, {service_version} ({execution_id} is not one)",
    ),
    (
        {"manifest_template": "reports/"},
        "give a relative path of plain names below dest (filled in, its segment '' is unsafe (it is empty))",
    ),
    (
        {"manifest_template": "../manifest.json"},
        "give a relative path of plain names below dest (filled in, its segment '..' is unsafe (it names a "
        "directory ('.' or '..'), which could escape the destination))",
    ),
]
DESTINATIONS = [
    ({"dest": ""}, DEST_WHAT),
    ({"dest": "relative/folder"}, f"{DEST_WHAT} (a local folder as 'file:///absolute/path')"),
    ({"dest": "/absolute/without/scheme"}, f"{DEST_WHAT} (a local folder as 'file:///absolute/path')"),
    ({"dest": "file://relative/x"}, "give a local folder as an absolute path: 'file:///absolute/path'"),
    ({"dest": 3}, DEST_WHAT),
]


@pytest.mark.parametrize(
    ("arguments", "fix"), NUMBERS_AND_FLAGS + NAMES_AND_IDS + SELECTIONS + TEMPLATES + DESTINATIONS
)
def test_a_bad_argument_fails_when_the_dag_is_parsed(arguments: dict[str, Any], fix: str) -> None:
    message = _refused(**arguments)
    assert message.startswith("Argument ") and message.endswith(f": {fix}."), message


def test_the_message_names_the_argument_and_its_value() -> None:
    assert _refused(indexes="9-0") == (
        "Argument indexes is '9-0': write the range '9-0' low to high ('0-9'): backwards it selects nothing."
    )
    assert _refused(max_concurrency="4") == f"Argument max_concurrency is '4': {CONCURRENCY}."
    assert _refused(execution_id=None) == f"Argument execution_id is None: {ONE_OF_TWO}."


@pytest.mark.parametrize(
    ("dest", "shown"),
    [
        ("s3://KEY:SECRET@bucket/prefix", "'s3://***@bucket/prefix'"),
        ("gs://user:SECRET@bucket", "'gs://***@bucket'"),
        ("s3://KEY:SECRET@bucket/{{ ds }}", "'s3://***@bucket/{{ ds }}'"),  # refused even inside a template
        ("s3://KEY:{{ var.value.SECRET }}@bucket/{{ ds }}", "'s3://***@bucket/{{ ds }}'"),
    ],
)
def test_credentials_in_dest_are_refused_where_written_and_never_shown(dest: str, shown: str) -> None:
    message = _refused(dest=dest)
    assert message == f"Argument dest is {shown}: {NO_CREDENTIALS}."
    assert "SECRET" not in message


def test_credentials_in_an_object_storage_path_are_refused() -> None:
    message = _refused(dest=ObjectStoragePath("s3://KEY:SECRET@bucket/prefix"))
    assert message == (
        "Argument dest is 's3://***@bucket/prefix': give the path without credentials, and the store's Airflow "
        "connection (with them) as dest_conn_id."
    )


def test_a_long_value_is_cut_to_200_characters_with_its_length() -> None:
    message = _refused(path_template="x" * 30_000 + "/{file_name}")
    assert "…' (30,012 characters)" in message and "…' (30,000 characters)" in message
    assert len(message) < 700


def test_dest_as_outlet_needs_a_fixed_dest() -> None:
    assert _refused(dest="s3://bucket/{{ ds }}", dest_as_outlet=True) == (
        "Argument dest is 's3://bucket/{{ ds }}': give a fixed dest with dest_as_outlet=True, or pass "
        "outlets=[Asset(...)] yourself."
    )


def test_good_arguments_are_kept_and_defaults_follow_the_form() -> None:
    one = _operator(poll_interval=timedelta(seconds=5), timeout=timedelta(minutes=2), indexes="0-999999999")
    assert (
        one.poll_interval == 5.0 and one.timeout == 120.0 and one.indexes == "0-999999999"
    )  # never expanded
    assert one.unreachable_timeout == 1800.0  # 30 minutes by default
    assert _operator(unreachable_timeout=timedelta(minutes=5)).unreachable_timeout == 300.0
    assert (one.path_template, one.manifest_template) == (
        "{execution_id}/{index}/{file_name}",
        "{execution_id}/manifest.json",
    )
    task = _operator(execution_id=None, execution_ids=["e1", "e2"], indexes=[], file_names="*.csv")
    assert (task.path_template, task.manifest_template) == (TASK_PATH_TEMPLATE, TASK_MANIFEST_TEMPLATE)
    assert (
        task.indexes == [] and task.file_names == "*.csv"
    )  # an empty list (from an XCom, say) copies nothing
    summary = {
        "execution_ids": ["e1"],
        "executions": [{"execution_id": "r1", "round": 1, "records": "0,3-4"}],
    }
    for form in ([["e1"], ["e2", "e3"]], [{"execution_ids": ["e1"]}], summary, "['e1', 'e2']", ("e1",)):
        assert _operator(execution_id=None, execution_ids=form).execution_ids == form


TEMPLATED = {
    "service_name": "{{ params.service }}",
    "service_version": "{{ params.version }}",
    "execution_id": "{{ params.execution_id }}",
    "dest": "s3://bucket/{{ ds }}",
    "indexes": "{{ params.indexes }}",
    "file_names": ["{{ params.file }}"],
    "path_template": "{{ params.layout }}",
    "manifest_template": "{{ params.manifest }}",
    "mlserver_conn_id": "{{ params.conn }}",
    "dest_conn_id": "{{ params.store }}",
}


def test_templated_arguments_wait_for_their_rendering() -> None:
    _operator(**TEMPLATED)
    _operator(**{**TEMPLATED, "execution_id": None, "execution_ids": "{{ ti.xcom_pull(task_ids='score') }}"})


@pytest.mark.parametrize(
    ("argument", "rendered", "fix"),
    [
        ("indexes", "9-0", "write the range '9-0' low to high ('0-9'): backwards it selects nothing"),
        (
            "execution_id",
            "",
            f"give a batch execution id, e.g. one of the batch operator's execution_ids {SEGMENT}",
        ),
        (
            "path_template",
            "{record}",
            "include {file_name}: without it, every artifact of a record lands on one path "
            "(e.g. '{record}/{file_name}')",
        ),
        ("dest", "s3://KEY:SECRET@bucket", NO_CREDENTIALS),
        ("dest", "bucket/no-scheme", f"{DEST_WHAT} (a local folder as 'file:///absolute/path')"),
        ("service_name", "a/b", f"give the name of a published web service {SEGMENT}"),
        ("mlserver_conn_id", "", CONN),
    ],
)
def test_a_rendered_argument_is_checked_before_anything_is_sent(
    argument: str, rendered: str, fix: str
) -> None:
    """As Airflow renders the templates before ``execute``: the check runs first (no connection exists here)."""
    op = _operator(**{**TEMPLATED, "mlserver_conn_id": "no_such_connection"})
    for name in TEMPLATED:  # what the other templates rendered to: good values
        setattr(op, name, getattr(_operator(), name) if name != "mlserver_conn_id" else "no_such_connection")
    op.file_names = None
    setattr(op, argument, rendered)
    with pytest.raises(OperatorArgumentError) as raised:
        op.execute({})  # type: ignore[arg-type]
    assert str(raised.value).endswith(f" once rendered: {fix}.")
    assert "SECRET" not in str(raised.value)


def test_an_xcom_argument_waits_for_its_resolution_and_sets_the_dependency() -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    with DAG("artifacts_xcom_argument", schedule=None, start_date=datetime(2026, 1, 1)):
        score = EmptyOperator(task_id="score")
        copy = _operator(execution_id=None, execution_ids=score.output["execution_ids"], indexes=score.output)
    assert copy.upstream_task_ids == {"score"}
