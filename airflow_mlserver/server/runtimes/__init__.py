"""The registry of service runtimes: one entry per ``runtimeType`` a service or a session may have.

Each entry (:class:`Runtime`) holds what the server checks for that runtime (the names of its variables and model
objects, the bytes of a model object, the code it can check without running it), the words its messages use,
and the loader a worker calls to load one of its services. Callers ask the registry (:func:`get`, :func:`stored`)
and never compare a runtime's name.

Each runtime's module (:mod:`.python`, :mod:`.r`) holds its loaded-service class and is imported by its loader
only, in a worker, the first time that worker loads one of its services: the server process never imports it,
and R (rpy2) starts in a worker only for an R service. Both import the worker protocol
(:mod:`.protocol`), never each other. This module imports only the standard library at import time.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server.runtimes.protocol import Job, LoadedService


@dataclass(frozen=True)
class Runtime:
    """One service runtime.

    :param name: Its ``runtimeType`` as stored and answered (a request may spell it in any case).
    :param with_article: Its name after an indefinite article, for messages (``a Python``, ``an R``).
    :param valid_name: Whether a name can be a variable of its code (a declared input or output).
    :param object_name: What a model object's name may be: a variable name that is also a plain file name.
    :param variable_noun: What a model object's name must be, for messages.
    :param model_format: How a model object's bytes are serialized, for messages.
    :param check_model_object: Why a model object's bytes cannot be loaded by this runtime, or ``""``.
    :param check_code: Why ``code`` or ``initCode`` (named by the first argument) is not valid, or ``""`` (a
        runtime the server process does not run checks nothing: its worker reports the error).
    :param loader: Loads one service revision in a worker (raises when it cannot load).
    """

    name: str
    with_article: str
    valid_name: Callable[[str], bool]
    object_name: re.Pattern[str]
    variable_noun: str
    model_format: str
    check_model_object: Callable[[bytes], str]
    check_code: Callable[[str, str], str]
    loader: Callable[[Job], LoadedService]


class UnknownRuntimeError(ValueError):
    """A ``runtimeType`` no entry of the registry has; the message says which ones there are."""


# -- Python ---------------------------------------------------------------------------------------------------


def _python_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _python_code(what: str, code: str) -> str:
    try:
        compile(code, f"<{what}>", "exec")
    except SyntaxError as exc:
        return f"'{what}' is not valid Python: {exc.msg} (line {exc.lineno})."
    return ""


def _load_python(job: Job) -> LoadedService:
    from airflow_mlserver.server.runtimes.python import PythonService

    return PythonService(job)


PYTHON = Runtime(
    name="Python",
    with_article="a Python",
    valid_name=_python_name,
    object_name=re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"),
    variable_noun="a Python variable name",
    model_format="dill-serialized",
    check_model_object=lambda data: "",  # dill bytes are only read by the service's worker
    check_code=_python_code,
    loader=_load_python,
)


# -- R --------------------------------------------------------------------------------------------------------

#: An R variable name: letters, digits, '.' and '_', starting with a letter or a dot and a letter.
_R_NAME = re.compile(r"^(?:[A-Za-z]|\.[A-Za-z])[A-Za-z0-9._]*$")
_R_RESERVED = frozenset(
    (
        *("if", "else", "repeat", "while", "function", "for", "in", "next", "break"),
        *("TRUE", "FALSE", "NULL", "Inf", "NaN", "NA"),
        *("NA_integer_", "NA_real_", "NA_character_", "NA_complex_"),
    )
)


def _r_name(name: str) -> bool:
    return bool(_R_NAME.match(name)) and name not in _R_RESERVED


def _r_model_object(data: bytes) -> str:
    from airflow_mlserver.client.publishing import is_rds  # the client's rule; its module is not light

    if is_rds(data):
        return ""
    return f"is not RDS (it starts with {data[:8]!r}): send what R's saveRDS writes."


def _load_r(job: Job) -> LoadedService:
    from airflow_mlserver.server.runtimes.r import (
        RService,
    )  # imported (and R started) by a worker's first R service

    return RService(job)


R = Runtime(
    name="R",
    with_article="an R",
    valid_name=_r_name,
    # a plain file name too: starting with a letter or with a dot and a letter, so never ``.`` or ``..``
    object_name=re.compile(r"^(?:[A-Za-z]|\.[A-Za-z])[A-Za-z0-9._]{0,127}$"),
    variable_noun="an R variable name (letters, digits, '.' and '_', starting with a letter)",
    model_format="RDS (saveRDS)",
    check_model_object=_r_model_object,
    check_code=lambda what, code: (
        ""
    ),  # parsed by the worker that first runs it (the server process does not load R)
    loader=_load_r,
)


# -- the registry ---------------------------------------------------------------------------------------------

#: Every runtime, in the order messages list them.
RUNTIMES = (PYTHON, R)
#: The runtime of a service or a session that names none.
DEFAULT = PYTHON
_BY_NAME = {runtime.name.lower(): runtime for runtime in RUNTIMES}


def get(name: str) -> Runtime:
    """The runtime named ``name`` in any case; :class:`UnknownRuntimeError` for a name no entry has."""
    runtime = _BY_NAME.get(name.lower())
    if runtime is None:
        choices = " or ".join(f"'{r.name}'" for r in RUNTIMES)
        raise UnknownRuntimeError(f"Unknown runtimeType {quoted(name)}: use {choices}.")
    return runtime


def stored(record: Mapping[str, Any]) -> Runtime:
    """The runtime of a stored service, session or snapshot (:data:`DEFAULT` when it names none)."""
    return get(record.get("runtimeType") or DEFAULT.name)


__all__ = ["DEFAULT", "RUNTIMES", "Runtime", "UnknownRuntimeError", "get", "stored"]
