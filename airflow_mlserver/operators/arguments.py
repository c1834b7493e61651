"""Checks of operator and sensor arguments where they are written: at construction, or right after rendering.

A task declares its checks as a mapping of argument name to :data:`Check` and calls :func:`check_arguments`
at the end of ``__init__`` (so a bad DAG fails when it is parsed) and again with ``rendered=True`` at the top
of ``execute``, before anything is sent or awaited: an argument that holds a Jinja template is skipped at
construction and checked there, once it has rendered. A check answers the value to keep (a ``timedelta`` as
seconds, say) or raises :class:`~airflow_mlserver.exceptions.OperatorArgumentError`, which names the argument,
shows the value (at most about 200 characters of it, a password never) and says what to give instead.

Checks are built by the small factories below and combined with :func:`optional`::

    CHECKS = {
        "parallel_count": whole_number(1, 100),
        "poll_interval": seconds(),
        "service_name": segment("the name of a published web service"),
        "output_path": optional(uri("the path or URI of the results file, or None to write none")),
    }
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pandas as pd

from airflow_mlserver.client.protocol import valid_segment
from airflow_mlserver.exceptions import OperatorArgumentError
from airflow_mlserver.tables import is_path_like, named_format, suffix_format

#: A check: takes the argument's name and value, answers the value to keep or raises OperatorArgumentError.
Check = Callable[[str, Any], Any]

_TEMPLATE_MARKS = ("{{", "{%", "{#")


def has_template(value: Any) -> bool:
    """Whether ``value`` (text, or a list or dict holding text) contains a Jinja template."""
    if isinstance(value, str):
        return any(mark in value for mark in _TEMPLATE_MARKS)
    if isinstance(value, list | tuple):
        return any(has_template(v) for v in value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    return False


def check_arguments(task: Any, checks: Mapping[str, Check], rendered: bool = False) -> None:
    """Check ``task``'s arguments and keep what each check answers.

    At construction (``rendered=False``) a templated argument that holds a template, or any XComArg (it
    resolves at run time, as a template renders), is left for later; with ``rendered=True`` only the templated
    arguments are checked (the others were at construction). A refusal keeps its class, said "once rendered".
    """
    from airflow.sdk import XComArg

    templated = set(task.template_fields)
    for name, check in checks.items():
        value = getattr(task, name)
        later = isinstance(value, XComArg) or (name in templated and has_template(value))
        if (name not in templated) if rendered else later:
            continue  # checked at construction already, or to be checked once rendered
        try:
            setattr(task, name, check(name, value))
        except OperatorArgumentError as exc:
            if not rendered:
                raise
            raise type(exc)(exc.argument, exc.value, exc.fix, rendered=True) from None


def optional(check: Check) -> Check:
    """``check``, and None passes as it is."""

    def optional_check(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return optional_check


def whole_number(minimum: int, maximum: int | None = None, why: str = "") -> Check:
    """A whole number (never a bool, a float or text) from ``minimum`` (to ``maximum``); ``why`` the range."""
    span = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
    fix = f"give a whole number {span}" + (f" ({why})" if why else "")

    def whole_number_check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise OperatorArgumentError(name, value, fix)
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            raise OperatorArgumentError(name, value, fix)
        return number

    return whole_number_check


def seconds(zero: bool = False) -> Check:
    """A duration: a finite number of seconds above 0 (or 0 too, with ``zero``) or a timedelta; answers seconds."""
    fix = f"give a finite number of seconds {'of 0 or more' if zero else 'above 0'}, or a timedelta"

    def seconds_check(name: str, value: Any) -> float:
        if isinstance(value, timedelta):
            number = value.total_seconds()
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value)
        else:
            raise OperatorArgumentError(name, value, fix)
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise OperatorArgumentError(name, value, fix)
        return number

    return seconds_check


def _accepting(accepts: Callable[[Any], bool], fix: str) -> Check:
    """A check that keeps the value as it is when ``accepts`` it, and refuses it with ``fix`` otherwise."""

    def accepting_check(name: str, value: Any) -> Any:
        if not accepts(value):
            raise OperatorArgumentError(name, value, fix)
        return value

    return accepting_check


def flag() -> Check:
    """True or False (never text such as ``"false"``, which is true)."""
    return _accepting(lambda value: isinstance(value, bool), "give True or False")


def choice(*choices: str) -> Check:
    """One of ``choices``, exactly."""
    fix = f"give {', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}"
    return _accepting(lambda value: isinstance(value, str) and value in choices, fix)


def text(what: str) -> Check:
    """Non-empty text without control characters (a connection id, say); ``what`` says what it names."""
    return _accepting(
        lambda value: isinstance(value, str) and bool(value.strip()) and all(ord(c) >= 32 for c in value),
        f"give {what}",
    )


def segment(what: str) -> Check:
    """Text that can be one segment of a server path: a service name or version, an execution id."""
    fix = f"give {what} (non-empty text without '/', '\\' or control characters, and not '.' or '..')"
    return _accepting(valid_segment, fix)


def uri(what: str) -> Check:
    """A path or URI (text or a path object) that carries no password: credentials come from a connection."""

    def uri_check(name: str, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise OperatorArgumentError(name, value, f"give {what}")
            scheme, sep, rest = value.partition("://")
            userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
            if ":" in userinfo:
                shown = f"{scheme}://***@{rest.split('@', 1)[1]}"
                raise OperatorArgumentError(
                    name,
                    shown,
                    "give the URI without credentials, and the store's Airflow connection (with "
                    "them) as the conn_id argument beside it",
                )
        elif type(value).__name__ not in ("ObjectStoragePath", "PosixPath", "WindowsPath"):
            raise OperatorArgumentError(name, value, f"give {what}")
        return value

    return uri_check


def batch_records(name: str, value: Any) -> Any:
    """The batch operator's records: a non-empty DataFrame, list of dicts or dict of columns, or a path/URI."""
    what = (
        "a DataFrame, a list of dicts, a dict of columns (at least one record), or the path or URI of a CSV, TSV, "
        "Parquet or JSON-lines file"
    )
    if isinstance(value, pd.DataFrame | Mapping):
        if len(value) == 0:
            raise OperatorArgumentError(name, value, f"give {what}")
        return value
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(v, Mapping) for v in value):
            raise OperatorArgumentError(name, value, f"give {what}")
        return value
    return uri(what)(name, value)


def file_format(name: str, value: Any) -> str:
    """A records format: ``csv``, ``tsv``, ``parquet`` or ``jsonl`` (a suffix such as ``.json`` too)."""
    fmt = named_format(value) if isinstance(value, str) else None
    if fmt is None:
        raise OperatorArgumentError(
            name,
            value,
            "give 'csv', 'tsv', 'parquet' or 'jsonl' (or None, to read it from the file's suffix)",
        )
    return fmt


def records_file_format(records_value: Any, records_format_value: str | None, rendered: bool = False) -> None:
    """A records path whose format is neither given nor told by its suffix is refused (as ``records``).

    ``rendered`` says that the path is what a template rendered to.
    """
    if (
        records_format_value is None
        and is_path_like(records_value)
        and not has_template(records_value)
        and suffix_format(str(records_value)) is None
    ):
        raise OperatorArgumentError(
            "records",
            records_value,
            "give a file whose name ends in .csv, .tsv, .parquet or .jsonl (or .json, .ndjson, .tab, .pq, each also "
            ".gz), or give records_format",
            rendered,
        )
