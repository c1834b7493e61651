"""Turn tabular data into the JSON input records a web service declares, checked before anything is sent.

Accepted data: a pandas DataFrame, a list of dicts (one per record) or a dict of columns. Fields are laid
out in the order of the service's ``inputParameterDefinitions`` and coerced by declared type (the Python
client's rules: integer -> int, numeric -> float, character -> str, logical -> bool, vector -> list,
matrix -> list of lists, data.frame -> an object of columns). NaN, NaT and NA become ``null``; numpy and
pandas scalars become plain JSON values; timestamps become ISO 8601 text; a value may nest lists and dicts
:data:`MAX_NESTING` levels deep. Whatever cannot be coerced raises :class:`RecordValidationError` naming the
row (0-based, as batch indexes), the column, the value and the expected type; empty records raise it too.
Numeric columns of a DataFrame are checked and converted column-wise with numpy.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from airflow_mlserver.client.errors import RecordValidationError
from airflow_mlserver.client.models import ParameterDefinition, WebService
from airflow_mlserver.client.parameters import PARAMETER_TYPES
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.words import noun

RecordsInput = pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Any]
#: A service, or its declared inputs: what fixes the order and the types of a record's fields.
ServiceInputs = WebService | Sequence[ParameterDefinition]
#: What to do with columns a service does not declare. Here ``"keep"`` and ``"ignore"`` both send only the
#: declared inputs (they differ in the batch operator's results file); ``"drop"`` is their old name.
ExtraColumns = Literal["keep", "ignore", "error", "drop"]
EXTRA_COLUMNS: tuple[ExtraColumns, ...] = ("keep", "ignore", "error", "drop")

#: The most levels of lists and dicts in one value (a vector is 1, a matrix or a data.frame 2).
MAX_NESTING = 100
_ABSENT = object()
_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_TRUE, _FALSE = frozenset({"true", "t", "yes", "1"}), frozenset({"false", "f", "no", "0"})


class _Invalid(Exception):
    """A value cannot be coerced; carries why, and the offending element for nested values."""


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # nested too deep for repr
        text = reprlib.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _invalid_value(row: int, column: str, kind: str, value: Any, why: str) -> RecordValidationError:
    return RecordValidationError(
        f"Row {row}, column {quoted(column)}: {_describe(value)} is not a valid {kind} value: {why}."
    )


def _is_na(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


def _to_plain(value: Any, depth: int = 1) -> Any:
    """A value as plain JSON: numpy/pandas scalars unwrapped, NaN/NaT/NA -> None, timestamps -> ISO 8601.

    Raises ``_Invalid`` for what JSON cannot carry (infinite numbers, arbitrary objects) and for lists or dicts
    nested deeper than :data:`MAX_NESTING` (``depth``: the level of ``value``, if it is a list or dict).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if _is_na(value):
        return None
    if isinstance(value, float):
        if math.isinf(value):
            raise _Invalid("infinite numbers cannot be sent as JSON")
        return value
    if isinstance(value, np.generic):
        return _to_plain(value.item())
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, decimal.Decimal):
        return _to_plain(float(value))
    if isinstance(value, np.ndarray | pd.Series | pd.Index | list | tuple):
        return _plain_list(value, depth)
    if depth > MAX_NESTING:
        raise _Invalid(_TOO_DEEP)
    if isinstance(value, pd.DataFrame):
        return {str(c): _plain_list(value[c].tolist(), depth + 1) for c in value.columns}
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v, depth + 1) for k, v in value.items()}
    raise _Invalid(f"a {type(value).__name__} cannot be sent as JSON")


_SIMPLE = (int, str, bool)
_TOO_DEEP = f"it nests lists or dicts more than {MAX_NESTING} levels deep, the most a value may; flatten it"


def _plain_list(values: Any, depth: int = 1) -> list[Any]:
    """``_to_plain`` of every element of a list at ``depth``; a fast path for lists of ints, strings, booleans."""
    if depth > MAX_NESTING:
        raise _Invalid(_TOO_DEEP)
    if type(values) is list and all(type(v) in _SIMPLE for v in values):
        return list(values)
    return [_to_plain(v, depth + 1) for v in values]


# --- one coercer per declared type (the per-element path), registered in _COERCERS --------------------------


def _integer(value: Any) -> Any:
    if type(value) is int:
        return value
    if _is_na(value):
        return None
    if isinstance(value, bool | np.bool_):
        raise _Invalid("expected a whole number, not a boolean")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating | decimal.Decimal):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            return int(number)
        raise _Invalid("expected a whole number")
    if isinstance(value, str):
        if _INT_TEXT.match(value):
            return int(value)
        try:
            number = float(value)
        except ValueError:
            raise _Invalid("expected a whole number") from None
        if math.isfinite(number) and number.is_integer():
            return int(number)
    raise _Invalid("expected a whole number")


def _numeric(value: Any) -> Any:
    if type(value) is float:
        if math.isfinite(value):
            return value
        if math.isnan(value):
            return None
        raise _Invalid("expected a finite number")
    if _is_na(value):
        return None
    if isinstance(value, bool | np.bool_):
        raise _Invalid("expected a number, not a boolean")
    if isinstance(value, int | float | np.integer | np.floating | decimal.Decimal):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Invalid("expected a number") from None
    else:
        raise _Invalid("expected a number")
    if not math.isfinite(number):
        raise _Invalid("expected a finite number")
    return number


def _character(value: Any) -> Any:
    if type(value) is str:
        return value
    if _is_na(value):
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        raise _Invalid("expected text, not a boolean")
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating | decimal.Decimal):
        return str(_to_plain(value))
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date | dt.time | np.datetime64):
        return _to_plain(value)
    raise _Invalid("expected text")


def _logical(value: Any) -> Any:
    if type(value) is bool:
        return value
    if _is_na(value):
        return None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("expected true or false")


def _vector(value: Any) -> Any:
    if type(value) is list:
        return _plain_list(value)
    if value is None or (
        not isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index) and _is_na(value)
    ):
        return None
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise _Invalid(f"expected a one-dimensional list, got an array of shape {value.shape}")
    if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
        return value.tolist()
    if isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index):
        return _plain_list(value)
    raise _Invalid("expected a list of values")


def _matrix(value: Any) -> Any:
    if value is None or (not isinstance(value, list | tuple | np.ndarray | pd.DataFrame) and _is_na(value)):
        return None
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if isinstance(value, np.ndarray):
        if value.ndim != 2:
            raise _Invalid(f"expected a two-dimensional array, got shape {value.shape}")
        return [_plain_list(row, 2) for row in value.tolist()]
    if isinstance(value, list | tuple):
        rows = []
        for row in value:
            if not isinstance(row, list | tuple | np.ndarray):
                raise _Invalid("expected a list of rows, each a list")
            rows.append(_plain_list(row.tolist() if isinstance(row, np.ndarray) else row, 2))
        if len({len(r) for r in rows}) > 1:
            raise _Invalid("the rows have different lengths")
        return rows
    raise _Invalid("expected a list of rows")


def _data_frame(value: Any) -> Any:
    if value is None or (not isinstance(value, Mapping | list | tuple | pd.DataFrame) and _is_na(value)):
        return None
    if isinstance(value, list | tuple):
        if not all(isinstance(r, Mapping) for r in value):
            raise _Invalid("expected an object of columns, or a list of row objects")
        value = pd.DataFrame.from_records(list(value))
    if isinstance(value, pd.DataFrame):
        return _to_plain(value)
    if isinstance(value, Mapping):
        columns = {str(k): _to_plain(v, 2) for k, v in value.items()}
        lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
        if -1 in lengths:
            raise _Invalid("every column of a data.frame must be a list of values")
        if len(lengths) > 1:
            raise _Invalid("the columns have different lengths")
        return columns
    raise _Invalid("expected an object of columns")


def _passthrough(value: Any) -> Any:
    return _to_plain(value)


#: The coercer of each type of ``client.parameters.PARAMETER_TYPES``, by its name; a type outside the
#: contract passes through as plain JSON.
_COERCERS: dict[str, Callable[[Any], Any]] = {
    "integer": _integer,
    "numeric": _numeric,
    "character": _character,
    "logical": _logical,
    "vector": _vector,
    "matrix": _matrix,
    "data.frame": _data_frame,
}


def _expected(kind: str) -> str:
    return kind if kind in PARAMETER_TYPES else f"{kind!r}"


# --- column-wise coercion ----------------------------------------------------------------------------------


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _coerce_array(kind: str, arr: np.ndarray, column: str) -> list[Any] | None:
    """Column-wise coercion of a numpy array of numbers or booleans; None when the per-element path must run."""
    code = arr.dtype.kind
    if code not in "biuf":
        return None

    def fail(i: int, why: str) -> RecordValidationError:
        return _invalid_value(i, column, kind, arr[i].item(), why)

    if kind in ("integer", "numeric") and code == "b":
        raise fail(0, f"expected a {'' if kind == 'numeric' else 'whole '}number, not a boolean")
    if kind == "integer":
        if code in "iu":
            return arr.tolist()  # type: ignore[no-any-return]
        na = np.isnan(arr)
        bad = ~na & (~np.isfinite(arr) | (np.floor(np.where(na, 0, arr)) != np.where(na, 0, arr)))
        if bad.any():
            raise fail(_first_bad(bad), "expected a whole number")
        ints = np.where(na, 0, arr).astype(np.int64).astype(object)
        ints[na] = None
        return ints.tolist()  # type: ignore[no-any-return]
    if kind == "numeric":
        if code in "iu":
            return arr.astype(np.float64).tolist()  # type: ignore[no-any-return]
        na = np.isnan(arr)
        bad = np.isinf(arr)
        if bad.any():
            raise fail(_first_bad(bad), "expected a finite number")
        out = arr.astype(np.float64).astype(object)
        out[na] = None
        return out.tolist()  # type: ignore[no-any-return]
    if kind == "logical":
        if code == "b":
            return arr.tolist()  # type: ignore[no-any-return]
        na = np.isnan(arr) if code == "f" else np.zeros(len(arr), dtype=bool)
        bad = ~na & (arr != 0) & (arr != 1)
        if bad.any():
            raise fail(_first_bad(bad), "expected true or false")
        out = (np.where(na, 0, arr) == 1).astype(object)
        out[na] = None
        return out.tolist()  # type: ignore[no-any-return]
    return None


def _coerce_column(kind: str, values: Any, column: str) -> list[Any]:
    """The JSON-ready values of one column, coerced to ``kind``; raises naming the first bad row."""
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, np.dtype) and values.dtype.kind in "biuf":
            values = values.to_numpy()
        else:
            values = values.astype(object).where(values.notna(), None).to_numpy()
    if isinstance(values, np.ndarray) and values.ndim == 1:
        fast = _coerce_array(kind, values, column)
        if fast is not None:
            return fast
        values = values.tolist() if values.dtype.kind in "biufUS" else list(values)
    coerce = _COERCERS.get(kind, _passthrough)
    out: list[Any] = []
    append = out.append
    for i, value in enumerate(values):
        try:
            append(coerce(value))
        except _Invalid as exc:
            raise _invalid_value(i, column, _expected(kind), value, str(exc)) from None
    return out


# --- shapes of input data ----------------------------------------------------------------------------------


def _definitions(inputs: ServiceInputs) -> tuple[tuple[ParameterDefinition, ...], str]:
    if isinstance(inputs, WebService):
        return inputs.inputs, f"service '{inputs.name}' version '{inputs.version}'"
    return tuple(inputs), "the service"


def _declared(definitions: Sequence[ParameterDefinition]) -> str:
    return ", ".join(f"{d.name} ({d.type})" for d in definitions) or "none"


class _Table:
    """Columns of the input data, however it was given, with its row count."""

    def __init__(self, data: Any) -> None:
        self.frame: pd.DataFrame | None = None
        self.rows: Sequence[Mapping[str, Any]] | None = None
        self.columns: dict[str, Any] = {}
        if isinstance(data, pd.DataFrame):
            names = [str(c) for c in data.columns]
            if duplicated := sorted({n for n in names if names.count(n) > 1}):
                raise RecordValidationError(
                    f"The DataFrame has duplicate {noun(len(duplicated), 'column')} "
                    f"{', '.join(map(repr, duplicated))}: give each input one column."
                )
            self.frame = data
            self.names = names
            self.length = len(data)
        elif isinstance(data, Mapping):
            lengths: dict[str, int] = {}
            for key, column in data.items():
                if isinstance(column, str | bytes) or not isinstance(
                    column, Sequence | np.ndarray | pd.Series | pd.Index
                ):
                    raise RecordValidationError(
                        f"Column {quoted(key)} of the dict of columns is a {type(column).__name__}, not a list of "
                        "values: give one list per column (or pass a list of records instead)."
                    )
                lengths[str(key)] = len(column)
                self.columns[str(key)] = column
            if len(set(lengths.values())) > 1:
                detail = ", ".join(f"{k!r} has {n}" for k, n in lengths.items())
                raise RecordValidationError(
                    f"The columns have different lengths ({detail}): give every column one value per row."
                )
            self.names = list(self.columns)
            self.length = next(iter(lengths.values()), 0)
        elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
            for i, row in enumerate(data):
                if not isinstance(row, Mapping):
                    raise RecordValidationError(
                        f"Row {i} is a {type(row).__name__}, not a mapping of input name to value: give a list of "
                        "dicts, a dict of columns or a DataFrame."
                    )
            self.rows = data
            seen: dict[str, None] = {}
            for row in data:
                for key in row:
                    seen.setdefault(key, None)
            self.names = [str(k) for k in seen]
            self.length = len(data)
        else:
            raise RecordValidationError(
                f"Cannot read records from a {type(data).__name__}: give a pandas DataFrame, a list of dicts or a "
                "dict of columns."
            )

    def column(self, name: str, definitions: Sequence[ParameterDefinition]) -> Any:
        if self.frame is not None:
            return self.frame[self.frame.columns[self.names.index(name)]]
        if self.rows is not None:
            values = [row.get(name, _ABSENT) for row in self.rows]
            for i, value in enumerate(values):
                if value is _ABSENT:
                    raise RecordValidationError(
                        f"Row {i} has no value for input {quoted(name)}; every record needs every declared input: "
                        f"{_declared(definitions)}."
                    )
            return values
        return self.columns[name]


def _check_columns(
    table: _Table, definitions: Sequence[ParameterDefinition], label: str, extra_columns: ExtraColumns
) -> None:
    if extra_columns not in EXTRA_COLUMNS:
        raise RecordValidationError(
            f"extra_columns must be 'keep', 'ignore' or 'error', not {quoted(extra_columns)}."
        )
    if table.length == 0:  # before the columns: an empty list has none
        raise RecordValidationError("The records are empty: a batch needs at least one record.")
    declared = {d.name for d in definitions}
    missing = [d for d in definitions if d.name not in table.names]
    if missing:
        raise RecordValidationError(
            f"Missing input column {quoted(missing[0].name)} ({missing[0].type}): {label} declares inputs "
            f"{_declared(definitions)}; the data has {shortened(', '.join(table.names)) or 'no columns'}."
        )
    extra = [n for n in table.names if n not in declared]
    if extra and extra_columns == "error":
        raise RecordValidationError(
            f"Unexpected {noun(len(extra), 'column')} {shortened(', '.join(map(quoted, extra)))}: {label} declares "
            f"inputs {_declared(definitions)}. Remove {noun(len(extra), 'it', 'them')}, or pass extra_columns='keep' "
            "or 'ignore' to send only the declared inputs."
        )


def _coerced(
    data: RecordsInput, inputs: ServiceInputs, extra_columns: ExtraColumns
) -> tuple[list[str], list[list[Any]], int]:
    """Every check of the records, and each declared input's column of JSON-ready values (names, columns, rows)."""
    definitions, label = _definitions(inputs)
    table = _Table(data)
    _check_columns(table, definitions, label, extra_columns)
    names = [d.name for d in definitions]
    columns = [_coerce_column(d.type, table.column(d.name, definitions), d.name) for d in definitions]
    return names, columns, table.length


def prepare_records(
    data: RecordsInput, inputs: ServiceInputs, extra_columns: ExtraColumns = "error"
) -> list[dict[str, Any]]:
    """The JSON-ready input records of ``data`` for a service with these declared inputs.

    :param data: A pandas DataFrame, a list of dicts or a dict of columns.
    :param inputs: The service (or its input definitions) that fixes field order and types.
    :param extra_columns: ``"error"`` to refuse columns the service does not declare; ``"keep"`` or ``"ignore"``
        (or the older ``"drop"``) to leave them out of the records.
    """
    names, columns, length = _coerced(data, inputs, extra_columns)
    if not columns:
        return [{} for _ in range(length)]
    if len(columns) == 1:  # a third of the general case's time, which counts over a million records
        return [{names[0]: value} for value in columns[0]]
    return [dict(zip(names, values, strict=False)) for values in zip(*columns, strict=False)]  # equal lengths


def check_records(data: RecordsInput, inputs: ServiceInputs, extra_columns: ExtraColumns = "error") -> int:
    """The checks of :func:`prepare_records` without building the records (a pass over a large input before
    anything is sent); answer the number of records."""
    return _coerced(data, inputs, extra_columns)[2]


def prepare_inputs(
    values: Mapping[str, Any], inputs: ServiceInputs, extra_columns: ExtraColumns = "error"
) -> dict[str, Any]:
    """The JSON-ready inputs of one request-response call (a single record)."""
    if not isinstance(values, Mapping):
        raise RecordValidationError(
            f"The inputs are a {type(values).__name__}, not a mapping of input name to value."
        )
    return prepare_records([values], inputs, extra_columns)[0]
