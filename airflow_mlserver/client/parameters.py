"""The parameter types of the contract (section 2), and what each one means everywhere, in one table.

A web service declares each input and output as one of seven types. For each, :data:`PARAMETER_TYPES`
says: the JSON schema of a value (the local server's ``swagger.json``), how a results file stores it
(:mod:`airflow_mlserver.tables` maps the column kind to an Arrow type), which JSON values the local
server accepts for an input and what its service code then sees. Turning a caller's data (numpy and
pandas values included) into those JSON values is the job of the coercers in
:mod:`airflow_mlserver.client.records`, registered there by the same names. Adding a type is one entry
here plus its coercer.

This module imports nothing heavy: the local server's worker processes and Airflow's triggerer import it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Column(enum.Enum):
    """How a results file stores values of a type; ``JSON`` is a text column holding compact JSON text."""

    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING = "string"
    JSON = "json text"


class Binding(enum.Enum):
    """What a service's code sees for an input that is not a plain Python value."""

    NUMPY_ARRAY = "numpy array"
    DATA_FRAME = "pandas DataFrame"


_Schema = Mapping[str, Any]


@dataclass(frozen=True)
class ParameterType:
    """One declared type of the contract.

    :param name: The type's name on the wire (``inputParameterDefinitions[].type``).
    :param json_schema: The Swagger 2.0 schema of a value (treat it as read-only).
    :param column: How a results file stores an output of this type.
    :param binds_to: What the local server binds an input to: the Python type the JSON value is converted
        with, or a numpy array, or a pandas DataFrame.
    :param accepts: Whether the local server takes a (non-null) JSON value for an input of this type.
    :param expected: The local server's words for those values, in ``expected <expected>, got ...``.
    """

    name: str
    json_schema: _Schema = field(hash=False)
    column: Column
    binds_to: type | Binding
    accepts: Callable[[Any], bool] = field(hash=False, repr=False)
    expected: str


def _whole_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and float(value) == int(value)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _list(value: Any) -> bool:
    return isinstance(value, list)


def _list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(row, list) for row in value)


def _columns_or_rows(value: Any) -> bool:
    return isinstance(value, dict | list)


_Row = tuple[str, _Schema, Column, type | Binding, Callable[[Any], bool], str]

_VECTOR_SCHEMA: _Schema = {"type": "array", "items": {}}
_MATRIX_SCHEMA: _Schema = {"type": "array", "items": _VECTOR_SCHEMA}
_FRAME_SCHEMA: _Schema = {"type": "object", "additionalProperties": _VECTOR_SCHEMA}

# The contract's types, in its order. Per type: its name; the JSON schema of a value; how a results file stores
# it; what a service's code sees; which JSON values the local server takes; its words for them in an error.
_ROWS: tuple[_Row, ...] = (
    ("integer", {"type": "integer", "format": "int64"}, Column.INT64, int, _whole_number, "an integer"),
    ("numeric", {"type": "number", "format": "double"}, Column.FLOAT64, float, _number, "a number"),
    ("character", {"type": "string"}, Column.STRING, str, _text, "a string"),
    ("logical", {"type": "boolean"}, Column.BOOL, bool, _boolean, "true or false"),
    ("vector", _VECTOR_SCHEMA, Column.JSON, Binding.NUMPY_ARRAY, _list, "a list"),
    ("matrix", _MATRIX_SCHEMA, Column.JSON, Binding.NUMPY_ARRAY, _list_of_lists, "a list of lists"),
    ("data.frame", _FRAME_SCHEMA, Column.JSON, Binding.DATA_FRAME, _columns_or_rows, "an object of columns"),
)

#: Every declared type by name, in the contract's order.
PARAMETER_TYPES: Mapping[str, ParameterType] = MappingProxyType({r[0]: ParameterType(*r) for r in _ROWS})


def result_column(type_name: str) -> Column:
    """How a results file stores an output declared as ``type_name``; a type outside the contract as text."""
    known = PARAMETER_TYPES.get(type_name)
    return known.column if known is not None else Column.STRING
