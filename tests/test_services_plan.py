"""The services operators' decisions as tables, and their argument checks: no server, no store, no Airflow run.

The content digest and its marker in the description, the order of a service's versions, publish or reuse or
replace or refuse, which versions ``keep_newest`` deletes; then each bad argument refused at construction with
its own class, and a templated one once rendered.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_mlserver.client.models import WebService
from airflow_mlserver.exceptions import (
    OperatorArgumentError,
    ServiceArgumentError,
    ServiceCodeArgumentError,
    ServiceModelArgumentError,
    ServiceParameterArgumentError,
    ServiceRuntimeTypeError,
    ServiceVersionSelectionError,
)
from airflow_mlserver.operators.services import MLServerDeleteServiceOperator, MLServerPublishServiceOperator
from airflow_mlserver.operators.services.plan import (
    Action,
    content_digest,
    creation_instant,
    decide_publish,
    described,
    digest_in,
    newest_first,
    versions_to_delete,
)

D1, D2 = "0123456789abcdef", "fedcba9876543210"
CONTENT: dict[str, Any] = {
    "code": "y = x * 2",
    "init_code": None,
    "inputs": {"x": "numeric", "name": "character"},
    "outputs": {"y": "numeric"},
    "output_file_names": [],
    "operation_id": None,
    "runtime_type": "Python",
    "model_objects": {},
}


def _v(
    version: str, created: str | None = "2026-01-01T00:00:00", digest: str | None = None, name: str = "s"
) -> WebService:
    description = f"scores [content sha256:{digest}]" if digest else "scores"
    return WebService(name, version, description=description, creation_time=created)


# --- the digest and its marker ------------------------------------------------------------------------------


def test_the_digest_is_16_hex_digits_and_stable() -> None:
    digest = content_digest(**CONTENT)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert content_digest(**CONTENT) == digest
    assert content_digest(**{**CONTENT, "runtime_type": "python"}) == digest
    assert content_digest(**{**CONTENT, "init_code": ""}) == digest


@pytest.mark.parametrize(
    "change",
    [
        {"code": "y = x * 3"},
        {"init_code": "import math"},
        {"inputs": {"name": "character", "x": "numeric"}},  # the order of inputs is the records' layout
        {"inputs": {"x": "integer", "name": "character"}},
        {"outputs": {"y": "numeric", "z": "numeric"}},
        {"output_file_names": ["plot.png"]},
        {"operation_id": "score"},
        {"runtime_type": "R"},
        {"model_objects": {"model": b"\x80\x04K\x01."}},
    ],
)
def test_every_part_of_the_content_changes_the_digest(change: dict[str, Any]) -> None:
    assert content_digest(**{**CONTENT, **change}) != content_digest(**CONTENT)


def test_model_objects_count_by_name_and_bytes_not_by_order() -> None:
    a = content_digest(**{**CONTENT, "model_objects": {"a": b"1", "b": b"2"}})
    assert content_digest(**{**CONTENT, "model_objects": {"b": b"2", "a": b"1"}}) == a
    assert content_digest(**{**CONTENT, "model_objects": {"a": b"2", "b": b"1"}}) != a


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        (None, f"[content sha256:{D1}]"),
        ("", f"[content sha256:{D1}]"),
        ("Scores cars.", f"Scores cars. [content sha256:{D1}]"),
        (f"Scores cars. [content sha256:{D2}]", f"Scores cars. [content sha256:{D1}]"),  # an earlier marker
        (f"[content sha256:{D2}]\n", f"[content sha256:{D1}]"),
        ("a [content sha256:xyz] b", f"a [content sha256:xyz] b [content sha256:{D1}]"),
    ],
)
def test_the_marker_ends_the_description(description: str | None, expected: str) -> None:
    assert described(description, D1) == expected
    assert digest_in(expected) == D1


@pytest.mark.parametrize(
    "description",
    [
        None,
        "",
        "Scores cars.",
        f"[content sha256:{D1}] then more",
        "[content sha256:0123]",
        f"[content sha256:{D1.upper()}]",
    ],
)
def test_a_description_without_a_final_marker_carries_no_digest(description: str | None) -> None:
    assert digest_in(description) is None


# --- the order of versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05", "2026-01-02T03:04:05+00:00"),  # the local server's form: UTC
        ("2017-06-05T18:53:37.0335294", "2017-06-05T18:53:37.033529+00:00"),  # a real server's 7 digits
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05+00:00"),
        ("2026-01-02T05:04:05+02:00", "2026-01-02T05:04:05+02:00"),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_creation_times_are_read_as_iso_8601(text: str | None, expected: str | None) -> None:
    moment = creation_instant(text)
    assert (moment.isoformat() if moment else None) == expected


@pytest.mark.parametrize(
    ("versions", "newest"),
    [
        ([], []),
        ([_v("a", "2026-01-01T00:00:02"), _v("b", "2026-01-01T00:00:01")], ["a", "b"]),
        # the same second: the server's list order (oldest first) says which is newer
        ([_v("z"), _v("a"), _v("m")], ["m", "a", "z"]),
        # a time zone counts; "10" is newer than "9" by time, not by text
        ([_v("10", "2026-01-01T01:00:00+00:00"), _v("9", "2026-01-01T02:00:00+02:00")], ["10", "9"]),
        # no readable time: older than every dated version
        ([_v("x", None), _v("y", "2020-01-01T00:00:00"), _v("w", "soon")], ["y", "w", "x"]),
    ],
)
def test_versions_newest_first(versions: list[WebService], newest: list[str]) -> None:
    assert [s.version for s in newest_first(versions)] == newest


@pytest.mark.parametrize(
    ("keep", "expected"),
    [(1, ["v1", "v2", "v3"]), (2, ["v1", "v2"]), (3, ["v1"]), (4, []), (10, [])],
)
def test_keep_newest_deletes_the_oldest_first(keep: int, expected: list[str]) -> None:
    versions = [
        _v("v3", "2026-01-03T00:00:00"),
        _v("v1", "2026-01-01T00:00:00"),
        _v("other", "2025-01-01T00:00:00", name="another service"),
        _v("v4", "2026-01-04T00:00:00"),
        _v("v2", "2026-01-02T00:00:00"),
    ]
    assert versions_to_delete("s", versions, keep) == expected


# --- publish, reuse, replace or refuse ----------------------------------------------------------------------

LISTED = [
    _v("v1", "2026-01-01T00:00:00", D1),
    _v("v2", "2026-01-02T00:00:00", D2),
    _v("bare", "2026-01-03T00:00:00"),
    _v("v9", "2026-01-09T00:00:00", D1, name="another service"),
]


@pytest.mark.parametrize(
    ("version", "digest", "versions", "if_exists", "action", "to", "found"),
    [
        # a version that does not exist is published, whatever if_exists says
        ("v3", D1, LISTED, "fail_if_different", Action.PUBLISH, "v3", None),
        ("v3", D1, [], "skip", Action.PUBLISH, "v3", None),
        ("v9", D1, LISTED, "fail_if_different", Action.PUBLISH, "v9", None),  # another service's
        # the same content is never published again
        ("v1", D1, LISTED, "fail_if_different", Action.REUSE, "v1", D1),
        ("v1", D1, LISTED, "replace", Action.REUSE, "v1", D1),
        ("v1", D1, LISTED, "skip", Action.REUSE, "v1", D1),
        # other content, or no digest: if_exists decides
        ("v2", D1, LISTED, "fail_if_different", Action.CONFLICT, "v2", D2),
        ("v2", D1, LISTED, "replace", Action.REPLACE, "v2", D2),
        ("v2", D1, LISTED, "skip", Action.REUSE, "v2", D2),
        ("bare", D1, LISTED, "fail_if_different", Action.CONFLICT, "bare", None),
        ("bare", D1, LISTED, "replace", Action.REPLACE, "bare", None),
        ("bare", D1, LISTED, "skip", Action.REUSE, "bare", None),
        # version=None: a new version, unless the newest has this content
        (None, D1, [], "fail_if_different", Action.PUBLISH, None, None),
        (None, D1, LISTED, "fail_if_different", Action.PUBLISH, None, None),  # newest is "bare"
        (None, D2, LISTED[:2], "fail_if_different", Action.REUSE, "v2", D2),
        (None, D1, LISTED[:2], "fail_if_different", Action.PUBLISH, None, D2),  # v1 is older: not reused
        (None, D1, [LISTED[3]], "fail_if_different", Action.PUBLISH, None, None),
    ],
)
def test_decide_publish(
    version: str | None,
    digest: str,
    versions: list[WebService],
    if_exists: str,
    action: Action,
    to: str | None,
    found: str | None,
) -> None:
    decision = decide_publish("s", version, digest, versions, if_exists)
    assert (decision.action, decision.version, decision.found) == (action, to, found)
    assert decision.reason


def test_a_conflict_names_the_version_both_digests_and_the_fix() -> None:
    reason = decide_publish("s", "v2", D1, LISTED, "fail_if_different").reason
    assert "'s' version 'v2'" in reason and D1 in reason and D2 in reason
    assert "if_exists='replace'" in reason and "another service_version" in reason
    unknown = decide_publish("s", "bare", D1, LISTED, "fail_if_different").reason
    assert "unknown digest" in unknown and D1 in unknown


# --- arguments, at construction ------------------------------------------------------------------------------

_PUBLISH: dict[str, Any] = {
    "task_id": "publish",
    "service_name": "s",
    "code": "y = x",
    "inputs": {"x": "numeric"},
}


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"code": None}, ServiceCodeArgumentError, "exactly one"),
        ({"code_path": "file:///code.py"}, ServiceCodeArgumentError, "exactly one"),
        ({"code": "   "}, ServiceCodeArgumentError, "code as text"),
        ({"init_code": "a = 1", "init_code_path": "file:///init.py"}, ServiceCodeArgumentError, "not both"),
        ({"runtime_type": "Julia"}, ServiceRuntimeTypeError, "'Python' or 'R'"),
        ({"inputs": {"x": "float"}}, ServiceParameterArgumentError, "'numeric'"),
        ({"inputs": {"1x": "numeric"}}, ServiceParameterArgumentError, "variable name"),
        ({"outputs": ["y"]}, ServiceParameterArgumentError, "dict of variable name to type"),
        ({"output_file_names": "plot.png"}, ServiceParameterArgumentError, "list of file names"),
        ({"output_file_names": ["out/plot.png"]}, ServiceParameterArgumentError, "plain file name"),
        ({"if_exists": "overwrite"}, ServiceArgumentError, "'fail_if_different', 'replace' or 'skip'"),
        ({"service_name": ""}, ServiceArgumentError, "name of the web service"),
        ({"service_version": "a/b"}, ServiceArgumentError, "version to publish"),
        ({"model_paths": {}}, ServiceModelArgumentError, "non-empty dict"),
        (
            {"model_paths": {"model": "s3://key:secret@bucket/m.pkl"}},
            ServiceModelArgumentError,
            "without credentials",
        ),
        ({"model_objects": {"my model": 1}}, ServiceModelArgumentError, "variable name"),
        (
            {"model_objects": {"model": 1}, "model_paths": {"model": "file:///m.pkl"}},
            ServiceModelArgumentError,
            "once",
        ),
        ({"mlserver_conn_id": ""}, ServiceArgumentError, "connection id"),
    ],
)
def test_publish_arguments_are_refused_at_construction(
    change: dict[str, Any], error: type, words: str
) -> None:
    with pytest.raises(error, match="Argument ") as raised:
        MLServerPublishServiceOperator(**{**_PUBLISH, **change})
    assert words in str(raised.value)
    assert isinstance(raised.value, ServiceArgumentError)


def test_a_templated_argument_is_checked_once_rendered_with_its_own_class() -> None:
    task = MLServerPublishServiceOperator(
        **{**_PUBLISH, "inputs": {"x": "{{ params.kind }}"}, "runtime_type": "r"}
    )
    assert task.runtime_type == "R"  # the contract's spelling
    task.inputs = {"x": "float"}  # what the template rendered to
    with pytest.raises(ServiceParameterArgumentError, match="once rendered"):
        task._check_arguments(rendered=True)


def test_a_long_value_is_quoted_shortly() -> None:
    with pytest.raises(ServiceRuntimeTypeError) as raised:
        MLServerPublishServiceOperator(**{**_PUBLISH, "runtime_type": "x" * 5000})
    assert len(str(raised.value)) < 400 and "5,000 characters" in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "exactly one"),
        ({"service_version": "v1", "keep_newest": 2}, "exactly one"),
        ({"keep_newest": 0}, "of at least 1"),
        ({"keep_newest": -1}, "of at least 1"),
        ({"keep_newest": True}, "whole number"),
        ({"keep_newest": "2"}, "whole number"),
        ({"service_version": ".."}, "version to delete"),
    ],
)
def test_delete_arguments_are_refused_at_construction(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ServiceVersionSelectionError) as raised:
        MLServerDeleteServiceOperator(task_id="delete", service_name="s", **kwargs)
    assert words in str(raised.value)
    assert isinstance(raised.value, OperatorArgumentError)


def test_good_arguments_are_kept() -> None:
    task = MLServerPublishServiceOperator(
        **{**_PUBLISH, "output_file_names": ("plot.png",), "model_paths": {"model": "file:///m.pkl"}}
    )
    assert task.output_file_names == ["plot.png"] and task.multiple_outputs
    assert MLServerDeleteServiceOperator(task_id="d", service_name="s", keep_newest=2).keep_newest == 2
