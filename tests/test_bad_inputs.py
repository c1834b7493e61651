"""Bad input refused where it is written, with no server: ports, a connection Airflow cannot read, timeouts and
retries, record values nested too deep, empty records.

Each table row is one way a user gets it wrong and the exact message that answers it (the problem, the fix, at
most about 200 characters of the value, never a secret).
"""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_mlserver.client.errors import MLServerConfigError, RecordValidationError
from airflow_mlserver.client.mlserver import MLServerClient
from airflow_mlserver.client.models import ParameterDefinition, WebService
from airflow_mlserver.client.records import MAX_NESTING, check_records, prepare_inputs, prepare_records
from airflow_mlserver.client.settings import MAX_RETRIES, MAX_TIMEOUT, ConnectionSettings
from airflow_mlserver.hooks.mlserver import MLServerHook

CONN_ID = "mlserver_input"
VARIABLE = "AIRFLOW_CONN_MLSERVER_INPUT"
#: Where nothing listens, with a bearer token (no login due): any request sent would fail as a connection error,
#: not as bad input.
NOWHERE = "mlserver://:a-token@127.0.0.1:9"
PORT_FIX = "give a port from 1 to 65535, or leave it empty for the default (12800 for http, 443 for https)."
DEFAULTS = "(12800 for http, 443 for https)."
HOST_PORT_FIX = f"give a port from 1 to 65535, or leave it out of the host for the default {DEFAULTS}"
URI_PORT_FIX = "give a port from 1 to 65535, or leave it out for the default (12800 for http, 443 for https)."


def hook_for(monkeypatch: pytest.MonkeyPatch, value: str, **hook_args: Any) -> MLServerHook:
    monkeypatch.setenv(VARIABLE, value)
    return MLServerHook(CONN_ID, retry_wait=0.01, retry_wait_max=0.02, **hook_args)


def fields(**values: Any) -> SimpleNamespace:
    """Connection fields as any object may hold them (the client reads attributes, not an Airflow class)."""
    base: dict[str, Any] = {
        "conn_id": "ml",
        "conn_type": "mlserver",
        "host": "h",
        "port": None,
        "schema": None,
        "login": "admin",
        "password": "pw",
    }
    return SimpleNamespace(**{**base, **values})


# --- ports -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mlserver://admin:pw@h:0", f"Connection 'mlserver_input': port 0 is out of range: {PORT_FIX}"),
        (
            json.dumps({"conn_type": "mlserver", "host": "h", "port": 70000, "login": "a", "password": "pw"}),
            f"Connection 'mlserver_input': port 70000 is out of range: {PORT_FIX}",
        ),
        (
            json.dumps({"conn_type": "mlserver", "host": "h", "port": "0", "login": "a", "password": "pw"}),
            f"Connection 'mlserver_input': port 0 is out of range: {PORT_FIX}",
        ),
        (
            "mlserver://admin:pw@http%3A%2F%2Fh%3A0",
            f"Connection 'mlserver_input': host 'http://h:0' has port 0, which is out of range: {HOST_PORT_FIX}",
        ),
        (
            "mlserver://admin:pw@http%3A%2F%2Fh%3Aabc",
            "Connection 'mlserver_input': host 'http://h:abc' has port 'abc', which is not a number: "
            + HOST_PORT_FIX,
        ),
        (
            "mlserver://admin:pw@https%3A%2F%2Fh%3A99999%2Fbase",
            "Connection 'mlserver_input': host 'https://h:99999/base' has port 99999, which is out of range: "
            + HOST_PORT_FIX,
        ),
        (
            "mlserver://admin:pw@h%3A-1",
            f"Connection 'mlserver_input': host 'h:-1' has port '-1', which is not a number: {HOST_PORT_FIX}",
        ),
        (
            "mlserver://admin:pw@%5B%3A%3A1%5D%3Ax",
            f"Connection 'mlserver_input': host '[::1]:x' has port 'x', which is not a number: {HOST_PORT_FIX}",
        ),
    ],
)
def test_bad_ports_of_a_connection(monkeypatch: pytest.MonkeyPatch, uri: str, expected: str) -> None:
    hook = hook_for(monkeypatch, uri)
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.get_conn()
    assert str(excinfo.value) == expected
    assert hook.test_connection() == (
        False,
        expected.replace("Connection 'mlserver_input'", "This connection"),
    )


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (0, f"Connection 'ml': port 0 is out of range: {PORT_FIX}"),
        (-1, f"Connection 'ml': port -1 is out of range: {PORT_FIX}"),
        (65536, f"Connection 'ml': port 65536 is out of range: {PORT_FIX}"),
        ("abc", f"Connection 'ml': port 'abc' is not a number: {PORT_FIX}"),
        ("80 80", f"Connection 'ml': port '80 80' is not a number: {PORT_FIX}"),
        ("-5", f"Connection 'ml': port '-5' is not a number: {PORT_FIX}"),
        (80.5, f"Connection 'ml': port 80.5 is not a whole number: {PORT_FIX}"),
        (True, f"Connection 'ml': port True is not a whole number: {PORT_FIX}"),
        ("9" * 300, f"Connection 'ml': port {'9' * 200}… (300 characters) is out of range: {PORT_FIX}"),
    ],
)
def test_bad_port_fields(port: Any, expected: str) -> None:
    with pytest.raises(MLServerConfigError) as excinfo:
        ConnectionSettings.from_connection(fields(port=port), {})
    assert str(excinfo.value) == expected


@pytest.mark.parametrize(
    ("port", "host", "base_url"),
    [
        (None, "h", "http://h:12800"),
        ("", "h", "http://h:12800"),
        (" 8080 ", "h", "http://h:8080"),
        (1, "h", "http://h:1"),
        (65535, "h", "http://h:65535"),
        (None, "https://h:8443/base", "https://h:8443/base"),
        (None, "http://h:", "http://h:12800"),
        (9000, "http://h:8000", "http://h:9000"),  # the port field wins over the host's, as before
    ],
)
def test_good_ports(port: Any, host: str, base_url: str) -> None:
    assert ConnectionSettings.from_connection(fields(port=port, host=host), {}).base_url == base_url


# --- a connection Airflow cannot read from its environment variable ----------------------------------------------

VARIABLE_START = "Connection 'mlserver_input': the environment variable AIRFLOW_CONN_MLSERVER_INPUT"
URI_START = f"{VARIABLE_START} holds a URI that Airflow "
JSON_START = f"{VARIABLE_START} holds JSON that Airflow "
ENCODE = (
    "percent-encode any '/', '?', '#', '@' or ':' in its login, password or host (e.g. 'p%40ss' for 'p@ss')."
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "mlserver://admin:s3cret@h:99999",
            f"{URI_START}cannot read ('mlserver://admin:***@h:99999'): its port 99999 is out of range; {URI_PORT_FIX}",
        ),
        (
            "mlserver://admin:s3cret@h:abc",
            f"{URI_START}cannot read ('mlserver://admin:***@h:abc'): its port 'abc' is not a number; {URI_PORT_FIX}",
        ),
        (
            "mlserver://admin:s3cret@h:-1/https?access_token=s3cret&timeout=5",
            f"{URI_START}cannot read ('mlserver://admin:***@h:-1/https?access_token=***&timeout=5'): its port '-1' "
            f"is not a number; {URI_PORT_FIX}",
        ),
        (
            "mlserver://:s3cret@[::1]:123456",
            f"{URI_START}cannot read ('mlserver://:***@[::1]:123456'): its port 123456 is out of range; {URI_PORT_FIX}",
        ),
        (
            "mlserver://h:99999?__extra__=%7B%22access_token%22%3A+%22s3cret%22%7D",
            f"{URI_START}cannot read ('mlserver://h:99999?__extra__=***'): its port 99999 is out of range; "
            + URI_PORT_FIX,
        ),
        (
            "mlserver://admin:s3cret@https://ml.example.com",
            f"{URI_START}cannot read ('mlserver://admin:***@https://ml.example.com'): a host given as a URL must be "
            "percent-encoded; give the scheme by the connection type instead "
            "('mlserver+https://admin:...@ml.example.com/base') or encode the URL "
            "('mlserver://admin:...@https%3A%2F%2Fml.example.com').",
        ),
        (
            "mlserver://admin:s3#cret@h:8080",  # a '#' in the password cuts the URI short
            f"{URI_START}cannot read ('mlserver://admin:***@h:8080'): {ENCODE}",
        ),
        (
            json.dumps({"conn_type": "mlserver", "host": "h", "port": "abc", "password": "s3cret"}),
            f"{JSON_START}cannot read: its port 'abc' is not a number; {URI_PORT_FIX}",
        ),
        (
            json.dumps({"uri": "mlserver://admin:s3cret@h:99999"}),
            f"{JSON_START}cannot read: its port 99999 is out of range; {URI_PORT_FIX}",
        ),
        (
            json.dumps({"conn_type": "mlserver", "host": "h", "password": "s3cret", "timeout": 5}),
            f"{JSON_START}cannot read: a connection has no field 'timeout'; its fields are conn_type, host, port, "
            "schema, login, password, extra, description (put extras such as 'timeout' inside 'extra').",
        ),
        (
            '{"conn_type": "mlserver", "password": "s3cret"',
            f"{JSON_START}cannot read: it is not valid JSON (Expecting ',' delimiter at character 46); write an "
            "object of connection fields (conn_type, host, port, schema, login, password, extra, description), or "
            "a URI such as 'mlserver://admin:...@localhost:12800'.",
        ),
        (
            "   ",
            "Connection 'mlserver_input': the environment variable AIRFLOW_CONN_MLSERVER_INPUT is set but empty, so "
            "Airflow skips it: set it to the connection's URI (e.g. 'mlserver://admin:...@localhost:12800') or "
            "JSON, or unset it.",
        ),
    ],
)
def test_a_connection_airflow_cannot_read(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    """Airflow skips the variable and says the connection "isn't defined"; the hook says what is wrong."""
    hook = hook_for(monkeypatch, value)
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.get_conn()
    assert str(excinfo.value) == expected
    assert "s3cret" not in str(excinfo.value)
    with pytest.raises(MLServerConfigError) as excinfo:  # a trigger reads it with the async API
        asyncio.run(MLServerHook(CONN_ID).aget_conn())
    assert str(excinfo.value) == expected
    ok, message = hook.test_connection()
    assert (ok, message) == (False, expected.replace("Connection 'mlserver_input'", "This connection"))


def test_a_connection_that_is_nowhere_is_still_not_defined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    with pytest.raises(AirflowNotFoundException, match="isn't defined"):
        MLServerHook(CONN_ID).get_conn()


def test_an_empty_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MLServerConfigError, match=r"AIRFLOW_CONN_MLSERVER_INPUT is set but empty"):
        hook_for(monkeypatch, "").get_conn()


# --- timeout and max_retries -------------------------------------------------------------------------------

TIMEOUT = "Connection 'mlserver_input': extra 'timeout' must be a positive number of seconds"
RETRIES = "Connection 'mlserver_input': extra 'max_retries' must be a whole number of at least 0"


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        ("timeout=nan", f"{TIMEOUT}, not 'nan'."),
        ("timeout=NaN", f"{TIMEOUT}, not 'NaN'."),
        ("timeout=inf", f"{TIMEOUT}, at most 86,400 (a day), not 'inf'."),
        ("timeout=-inf", f"{TIMEOUT}, not '-inf'."),
        ("timeout=1e999", f"{TIMEOUT}, at most 86,400 (a day), not '1e999'."),
        ("timeout=86401", f"{TIMEOUT}, at most 86,400 (a day), not '86401'."),
        ("timeout=0", f"{TIMEOUT}, not '0'."),
        ("timeout=-1", f"{TIMEOUT}, not '-1'."),
        ("timeout=true", f"{TIMEOUT}, not 'true'."),
        ("max_retries=nan", f"{RETRIES}, not 'nan'."),
        ("max_retries=inf", f"{RETRIES}, not 'inf'."),
        ("max_retries=2.5", f"{RETRIES}, not '2.5'."),
        ("max_retries=3.0", f"{RETRIES}, not '3.0'."),
        ("max_retries=-1", f"{RETRIES}, not '-1'."),
        ("max_retries=true", f"{RETRIES}, not 'true'."),
        ("max_retries=101", f"{RETRIES}, at most 100, not '101'."),
        ("max_retries=99999999999999999999999", f"{RETRIES}, at most 100, not '99999999999999999999999'."),
    ],
)
def test_bad_timeout_and_retries_in_a_uri(
    monkeypatch: pytest.MonkeyPatch, extras: str, expected: str
) -> None:
    hook = hook_for(monkeypatch, f"mlserver://admin:pw@h?{extras}")
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.get_conn()
    assert str(excinfo.value) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('{"timeout": NaN}', f"{TIMEOUT}, not nan."),
        ('{"timeout": Infinity}', f"{TIMEOUT}, at most 86,400 (a day), not inf."),
        ('{"timeout": -Infinity}', f"{TIMEOUT}, not -inf."),
        ('{"timeout": 0}', f"{TIMEOUT}, not 0."),
        ('{"timeout": -0.5}', f"{TIMEOUT}, not -0.5."),
        ('{"timeout": true}', f"{TIMEOUT}, not True."),
        ('{"timeout": [5]}', f"{TIMEOUT}, not [5]."),
        ('{"max_retries": NaN}', f"{RETRIES}, not nan."),
        ('{"max_retries": Infinity}', f"{RETRIES}, not inf."),
        ('{"max_retries": 2.5}', f"{RETRIES}, not 2.5."),
        ('{"max_retries": false}', f"{RETRIES}, not False."),
        ('{"max_retries": -3}', f"{RETRIES}, not -3."),
        ('{"max_retries": 1e300}', f"{RETRIES}, at most 100, not 1e+300."),
    ],
)
def test_bad_timeout_and_retries_in_json_extras(
    monkeypatch: pytest.MonkeyPatch, extra: str, expected: str
) -> None:
    value = {"conn_type": "mlserver", "host": "h", "login": "a", "password": "pw", "extra": extra}
    hook = hook_for(monkeypatch, json.dumps(value))
    with pytest.raises(MLServerConfigError) as excinfo:
        hook.get_conn()
    assert str(excinfo.value) == expected


@pytest.mark.parametrize(
    ("extras", "timeout", "max_retries"),
    [
        ({"timeout": " 5 ", "max_retries": " 0 "}, 5.0, 0),
        ({"timeout": "0.5", "max_retries": "+3"}, 0.5, 3),
        ({"timeout": 86_400, "max_retries": 100}, MAX_TIMEOUT, MAX_RETRIES),
        ({"timeout": 30, "max_retries": 3.0}, 30.0, 3),
        ({"timeout": np.float64(2.5), "max_retries": np.int64(4)}, 2.5, 4),
    ],
)
def test_good_timeout_and_retries(extras: dict[str, Any], timeout: float, max_retries: int) -> None:
    settings = ConnectionSettings.from_connection(fields(), extras)
    assert (settings.timeout, settings.max_retries) == (timeout, max_retries)
    assert isinstance(settings.max_retries, int)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"timeout": math.nan},
            "Connection 'ml': the timeout override must be a positive number of seconds, not nan.",
        ),
        (
            {"timeout": math.inf},
            "Connection 'ml': the timeout override must be a positive number of seconds, at most 86,400 (a day), not "
            "inf.",
        ),
        (
            {"timeout": 0},
            "Connection 'ml': the timeout override must be a positive number of seconds, not 0.",
        ),
        (
            {"timeout": "-1"},
            "Connection 'ml': the timeout override must be a positive number of seconds, not '-1'.",
        ),
        (
            {"timeout": True},
            "Connection 'ml': the timeout override must be a positive number of seconds, not True.",
        ),
        (
            {"max_retries": 2.5},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, not 2.5.",
        ),
        (
            {"max_retries": math.inf},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, not inf.",
        ),
        (
            {"max_retries": -1},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, not -1.",
        ),
        (
            {"max_retries": "nan"},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, not 'nan'.",
        ),
        (
            {"max_retries": False},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, not False.",
        ),
        (
            {"max_retries": 1000},
            "Connection 'ml': the max_retries override must be a whole number of at least 0, at most 100, not 1000.",
        ),
    ],
)
def test_bad_overrides(overrides: dict[str, Any], expected: str) -> None:
    settings = ConnectionSettings(conn_id="ml", base_url="http://h:12800", login="a", password="pw")
    with pytest.raises(MLServerConfigError) as excinfo:
        settings.with_overrides(**overrides)
    assert str(excinfo.value) == expected
    assert settings.with_overrides(timeout=" 7 ", max_retries="0") == ConnectionSettings(
        conn_id="ml", base_url="http://h:12800", login="a", password="pw", timeout=7.0, max_retries=0
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"timeout": math.nan}, "Connection 'ml': timeout must be a positive number of seconds, not nan."),
        ({"timeout": 0.0}, "Connection 'ml': timeout must be a positive number of seconds, not 0.0."),
        ({"max_retries": -1}, "Connection 'ml': max_retries must be a whole number of at least 0, not -1."),
        ({"max_retries": 1.5}, "Connection 'ml': max_retries must be a whole number of at least 0, not 1.5."),
    ],
)
def test_settings_built_directly_are_checked(values: dict[str, Any], expected: str) -> None:
    """A client built without Airflow (``ConnectionSettings(...)``) gets the same checks."""
    with pytest.raises(MLServerConfigError) as excinfo:
        ConnectionSettings(conn_id="ml", base_url="http://h:12800", access_token="t", **values)
    assert str(excinfo.value) == expected


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            {"timeout": math.nan},
            "MLServerHook's argument timeout must be a positive number of seconds, not nan.",
        ),
        ({"timeout": -5}, "MLServerHook's argument timeout must be a positive number of seconds, not -5."),
        (
            {"timeout": math.inf},
            "MLServerHook's argument timeout must be a positive number of seconds, at most 86,400 (a day), not inf.",
        ),
        (
            {"max_retries": 2.5},
            "MLServerHook's argument max_retries must be a whole number of at least 0, not 2.5.",
        ),
        (
            {"max_retries": True},
            "MLServerHook's argument max_retries must be a whole number of at least 0, not True.",
        ),
    ],
)
def test_bad_hook_arguments_are_refused_where_they_are_written(
    arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises(MLServerConfigError) as excinfo:
        MLServerHook(CONN_ID, **arguments)
    assert str(excinfo.value) == expected


# --- record values nested too deep -------------------------------------------------------------------------


def nested(levels: int, inner: Any = 1, kind: type = list) -> Any:
    value = inner
    for _ in range(levels):
        value = [value] if kind is list else {"k": value}
    return value


DEEP = nested(5000)
TOO_DEEP = (
    f"is not a valid vector value: it nests lists or dicts more than {MAX_NESTING} levels deep, the most a value "
    "may; flatten it."
)
VECTOR = [ParameterDefinition("v", "vector")]


@pytest.mark.parametrize(
    ("records", "inputs", "expected"),
    [
        ([{"v": DEEP}], VECTOR, f"Row 0, column 'v': [[[[[[[...]]]]]]] (list) {TOO_DEEP}"),
        (
            [{"v": [1]}, {"v": [2]}, {"v": DEEP}],
            VECTOR,
            f"Row 2, column 'v': [[[[[[[...]]]]]]] (list) {TOO_DEEP}",
        ),
        ({"v": [[1], DEEP]}, VECTOR, f"Row 1, column 'v': [[[[[[[...]]]]]]] (list) {TOO_DEEP}"),
        (
            pd.DataFrame({"v": pd.Series([[1, 2], DEEP], dtype=object)}),
            VECTOR,
            f"Row 1, column 'v': [[[[[[[...]]]]]]] (list) {TOO_DEEP}",
        ),
        (
            [{"m": [[1], [DEEP]]}],
            [ParameterDefinition("m", "matrix")],
            f"Row 0, column 'm': [[1], [[[[[[...]]]]]]] (list) {TOO_DEEP.replace('vector', 'matrix')}",
        ),
        (
            [{"f": {"a": [nested(5000, kind=dict)]}}],
            [ParameterDefinition("f", "data.frame")],
            "Row 0, column 'f': {'a': [{'k': {'k': {'k': {'k': {...}}}}}]} (dict) "
            + TOO_DEEP.replace("vector", "data.frame"),
        ),
        (
            [{"o": nested(MAX_NESTING + 1, kind=dict)}],
            [ParameterDefinition("o", "object")],
            None,
        ),
        ([{"x": DEEP}], [ParameterDefinition("x", "numeric")], None),
        ([{"s": DEEP}], [ParameterDefinition("s", "character")], None),
    ],
)
def test_values_nested_too_deep(
    records: Any, inputs: list[ParameterDefinition], expected: str | None
) -> None:
    """Refused with the row, the column and the limit, never a bare RecursionError (the check pass says the same)."""
    with pytest.raises(RecordValidationError) as excinfo:
        prepare_records(records, inputs)
    if expected is not None:
        assert str(excinfo.value) == expected
    assert str(excinfo.value).startswith("Row ")
    assert len(str(excinfo.value)) < 400
    with pytest.raises(RecordValidationError) as again:
        check_records(records, inputs)
    assert str(again.value) == str(excinfo.value)


def test_values_nested_to_the_limit_are_sent_whole() -> None:
    deepest = nested(MAX_NESTING)
    assert prepare_records([{"v": deepest}], VECTOR) == [{"v": deepest}]
    frame = nested(MAX_NESTING - 2, kind=dict)  # an object of columns (1 level), a column (2), its values
    assert prepare_records([{"f": {"a": [frame]}}], [ParameterDefinition("f", "data.frame")]) == [
        {"f": {"a": [frame]}}
    ]
    with pytest.raises(RecordValidationError, match=f"more than {MAX_NESTING} levels deep"):
        prepare_records([{"v": nested(MAX_NESTING + 1)}], VECTOR)
    looped: list[Any] = [1]
    looped.append(looped)  # a list that holds itself nests without end
    with pytest.raises(RecordValidationError, match=r"^Row 0, column 'v': \[1, \[\.\.\.\]\] \(list\) is not"):
        prepare_records([{"v": looped}], VECTOR)


def test_deep_values_are_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook and the client check the records before any request (nothing listens at the connection's port)."""
    service = WebService(name="s", version="1", inputs=tuple(VECTOR))
    hook = hook_for(monkeypatch, NOWHERE)
    with pytest.raises(RecordValidationError, match=r"^Row 0, column 'v': .* more than 100 levels deep"):
        hook.start_batch("s", "1", [{"v": DEEP}], service=service)
    with pytest.raises(RecordValidationError, match=r"^Row 0, column 'v': .* more than 100 levels deep"):
        hook.consume("s", "1", {"v": DEEP}, service=service)
    settings = ConnectionSettings(conn_id="ml", base_url="http://127.0.0.1:9", access_token="a-token")
    with MLServerClient(settings) as client, pytest.raises(RecordValidationError, match="100 levels deep"):
        client.start_batch("s", "1", {"v": [DEEP]}, service=service)


# --- empty records -----------------------------------------------------------------------------------------

SERVICE = WebService(name="tx", version="1.0", inputs=(ParameterDefinition("a", "numeric"),))
EMPTY = "The records are empty: a batch needs at least one record."


@pytest.mark.parametrize(
    "records",
    [
        [],
        (),
        {},
        {"a": []},
        {"b": []},
        {"a": np.array([])},
        pd.DataFrame(),
        pd.DataFrame({"a": []}),
        pd.DataFrame({"b": [], "c": []}),
        pd.DataFrame({"a": [1.0, 2.0]}).iloc[:0],
    ],
    ids=[
        "empty list",
        "empty tuple",
        "empty dict",
        "dict of an empty column",
        "dict of an undeclared empty column",
        "dict of an empty array",
        "empty DataFrame",
        "DataFrame of an empty column",
        "DataFrame of undeclared empty columns",
        "DataFrame sliced to no rows",
    ],
)
def test_empty_records(records: Any) -> None:
    for check in (prepare_records, check_records):
        with pytest.raises(RecordValidationError) as excinfo:
            check(records, SERVICE)
        assert str(excinfo.value) == EMPTY
    with pytest.raises(RecordValidationError) as excinfo:  # the columns need not be checked for that
        prepare_records(records, SERVICE, extra_columns="keep")
    assert str(excinfo.value) == EMPTY
    with pytest.raises(RecordValidationError) as excinfo:  # nor need the service declare inputs
        prepare_records(records, [])
    assert str(excinfo.value) == EMPTY


def test_empty_records_are_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, NOWHERE)
    for records in ([], {}, pd.DataFrame()):
        with pytest.raises(RecordValidationError) as excinfo:
            hook.start_batch("tx", "1.0", records, service=SERVICE)
        assert str(excinfo.value) == EMPTY
    settings = ConnectionSettings(conn_id="ml", base_url="http://127.0.0.1:9", access_token="a-token")
    with MLServerClient(settings) as client, pytest.raises(RecordValidationError) as excinfo:
        client.start_batch("tx", "1.0", [], service=SERVICE)
    assert str(excinfo.value) == EMPTY


def test_one_record_with_no_fields_is_not_empty() -> None:
    """A call's inputs ``{}`` are one record that lacks every input, not an empty batch."""
    expected = (
        "Missing input column 'a' (numeric): service 'tx' version '1.0' declares inputs a (numeric); the data has "
        "no columns."
    )
    for call in (lambda: prepare_records([{}], SERVICE), lambda: prepare_inputs({}, SERVICE)):
        with pytest.raises(RecordValidationError) as excinfo:
            call()
        assert str(excinfo.value) == expected
