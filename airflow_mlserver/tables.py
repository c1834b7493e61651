"""Reading input records and writing result tables, chunk by chunk, through Airflow's object storage.

Inputs can be a DataFrame, a list of dicts, a dict of columns, or a path/URI readable through
``ObjectStoragePath`` (CSV, TSV, Parquet, JSON lines). Every reader yields DataFrames of at most
``chunk_size`` rows, so memory stays bounded by the chunk whatever the size of the data set; reading the
same source twice yields the same chunks, which is what lets a retried task find "chunk 3" again.

Results are written as Parquet (default) or CSV, one row per input record: the input columns, then each
declared output, then ``success`` and ``error_message`` (and ``attempts`` when failed records are rescored).
Output columns follow the service's declaration and the table of :mod:`airflow_mlserver.client.parameters`
(``vector``, ``matrix`` and ``data.frame`` outputs are stored as JSON text). The file is written under a
temporary name and moved into place, so a reader never sees a half-written result.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from airflow_mlserver.client.models import RecordResult, ResultsPage, WebService
from airflow_mlserver.client.parameters import Column, result_column
from airflow_mlserver.client.words import plural
from airflow_mlserver.exceptions import MLServerConfigError

RecordsFormat = Literal["csv", "tsv", "parquet", "jsonl"]
ResultsFormat = Literal["parquet", "csv"]

_SUFFIXES: dict[str, RecordsFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}

#: The Arrow type of each kind of results column (see ``client.parameters``).
_ARROW_TYPES: dict[Column, pa.DataType] = {
    Column.INT64: pa.int64(),
    Column.FLOAT64: pa.float64(),
    Column.BOOL: pa.bool_(),
    Column.STRING: pa.string(),
    Column.JSON: pa.string(),
}


def named_format(name: str) -> RecordsFormat | None:
    """A records format as a DAG names it: a format or a suffix (any case, with or without its dot), or None."""
    return _SUFFIXES.get("." + name.lower().lstrip("."))


def suffix_format(path: str) -> RecordsFormat | None:
    """The format a file's name tells (``.csv``, ``.parquet``, ``.jsonl``, ... also gzipped), or None."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix) or name.endswith(suffix + ".gz"):
            return fmt
    return None


def records_format(path: str, records_format: str | None) -> RecordsFormat:
    """The format of a records file: the one given, else read from the file's suffix."""
    fmt = named_format(records_format) if records_format else suffix_format(path)
    if fmt is not None:
        return fmt
    if records_format:
        raise MLServerConfigError(
            f"records_format {records_format!r} is not supported: use csv, tsv, parquet or jsonl."
        )
    raise MLServerConfigError(
        f"Cannot tell the format of records file {path!r} from its name: give records_format "
        "(csv, tsv, parquet or jsonl)."
    )


def storage_path(uri: Any, conn_id: str | None = None) -> Any:
    """An ``ObjectStoragePath`` for a URI or local path (a plain path means ``file://``)."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(uri, ObjectStoragePath):
        return uri
    text = str(uri)
    if "://" not in text:
        text = "file://" + str(Path(text).absolute())
    return ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def is_path_like(records: Any) -> bool:
    if isinstance(records, str):
        return True
    return type(records).__name__ in ("ObjectStoragePath", "PosixPath", "WindowsPath")


def iter_frames(
    records: Any, chunk_size: int, records_format_: str | None = None, conn_id: str | None = None
) -> Iterator[pd.DataFrame]:
    """The records as DataFrames of at most ``chunk_size`` rows, in input order (index restarts per chunk)."""
    if chunk_size < 1:
        raise MLServerConfigError(f"chunk_size must be at least 1, not {chunk_size}.")
    if isinstance(records, pd.DataFrame):
        for start in range(0, len(records), chunk_size):
            yield records.iloc[start : start + chunk_size].reset_index(drop=True)
        return
    if isinstance(records, Mapping):
        yield from iter_frames(pd.DataFrame(dict(records)), chunk_size)
        return
    if is_path_like(records):
        yield from _iter_file(storage_path(records, conn_id), chunk_size, records_format_)
        return
    if isinstance(records, Sequence):
        for start in range(0, len(records), chunk_size):
            yield pd.DataFrame.from_records(list(records[start : start + chunk_size]))
        return
    raise MLServerConfigError(
        f"records is a {type(records).__name__}: give a DataFrame, a list of dicts, a dict of columns, "
        "or a path/URI of a CSV, TSV, Parquet or JSON-lines file."
    )


def _iter_file(path: Any, chunk_size: int, records_format_: str | None) -> Iterator[pd.DataFrame]:
    fmt = records_format(str(path), records_format_)
    if not path.exists():
        raise MLServerConfigError(f"Records file {path} does not exist: check the path and its connection.")
    compression: Literal["gzip"] | None = "gzip" if str(path).endswith(".gz") else None
    with path.open("rb") as handle:
        if fmt == "parquet":
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(batch_size=chunk_size):
                yield batch.to_pandas()
        elif fmt == "jsonl":
            yield from pd.read_json(  # type: ignore[call-overload]
                handle, lines=True, chunksize=chunk_size, compression=compression
            )
        else:
            sep = "\t" if fmt == "tsv" else ","
            yield from pd.read_csv(handle, sep=sep, chunksize=chunk_size, compression=compression)


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class ResultColumns:
    """The names of a results table's columns after the inputs: an input column of the same name turns
    ``y`` into ``output_y``, ``success`` into ``output_success``, and so on.

    :param outputs: The column of each declared output, by output name, in declaration order.
    """

    outputs: dict[str, str]
    success: str
    error_message: str
    attempts: str

    @classmethod
    def after(cls, inputs: Sequence[str], service: WebService) -> ResultColumns:
        """The result columns that follow ``record`` and the input columns ``inputs``."""
        taken = {"record", *inputs}

        def unique(name: str) -> str:
            chosen = name if name not in taken else f"output_{name}"
            taken.add(chosen)
            return chosen

        outputs = {o.name: unique(o.name) for o in service.outputs}
        return cls(outputs, unique("success"), unique("error_message"), unique("attempts"))

    @classmethod
    def find(cls, columns: Sequence[str], service: WebService) -> ResultColumns:
        """The result columns of a results table with these ``columns``, found by their names: the inputs are
        the columns between ``record`` and the first place where the result columns they imply stand."""
        for end in range(1, len(columns) + 1):
            names = cls.after(columns[1:end], service)
            if list(columns[end : end + len(names.outputs) + 2]) == [
                *names.outputs.values(),
                names.success,
                names.error_message,
            ]:
                return names
        raise ValueError(f"not a results table of web service '{service.name}': columns {list(columns)[:20]}")


def _output_values(results: Sequence[RecordResult], name: str, column: Column) -> list[Any]:
    values = [r.outputs.get(name) if r.success else None for r in results]
    return [_json_text(v) for v in values] if column is Column.JSON else values


def results_frame(
    inputs: pd.DataFrame,
    pages: Iterable[ResultsPage],
    service: WebService,
    offset: int,
    attempts: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One chunk's result rows: the input columns, each declared output, ``success``, ``error_message``.

    ``pages`` (the results as they streamed in) are read once, each into columns (a stream from the server is
    never held whole). ``record`` is the 0-based row number in the whole input (chunk offset + position in the
    chunk); with ``attempts`` (how many times each record was scored) an ``attempts`` column ends the rows.
    """
    names = [o.name for o in service.outputs]
    outputs: dict[str, list[Any]] = {name: [] for name in names}
    success: list[bool] = []
    errors: list[str | None] = []
    for page in pages:
        page_success, page_errors, page_outputs = page.columns(names)
        success += page_success
        errors += page_errors
        for name in names:
            outputs[name] += page_outputs[name]
        del page  # not alive while the next page decodes (see ResultsPage)
    if len(success) != len(inputs):
        raise ValueError(f"{plural(len(success), 'result')} for {plural(len(inputs), 'input record')}")
    columns = ResultColumns.after([str(c) for c in inputs.columns], service)
    frame = inputs.reset_index(drop=True).copy()
    frame.insert(0, "record", range(offset, offset + len(inputs)))
    for output in service.outputs:
        values = outputs[output.name]
        if result_column(output.type) is Column.JSON:
            values = [_json_text(v) for v in values]
        frame[columns.outputs[output.name]] = values
    frame[columns.success] = success
    frame[columns.error_message] = errors
    if attempts is not None:
        frame[columns.attempts] = list(attempts)
    return frame


def patch_results(
    frame: pd.DataFrame, rows: Sequence[int], results: Sequence[RecordResult], service: WebService
) -> None:
    """Put ``results`` in place of the outcomes of rows ``rows`` of a results table (as :func:`results_frame`
    makes it, without ``attempts``; its index 0, 1, ...), in place."""
    if not rows:
        return
    inputs = frame.columns[1 : len(frame.columns) - len(service.outputs) - 2]
    names = ResultColumns.after([str(c) for c in inputs], service)
    positions = list(rows)
    for output in service.outputs:
        column = names.outputs[output.name]
        frame[column] = frame[column].astype(object)  # a patched value may be None where the column has none
        values = _output_values(results, output.name, result_column(output.type))
        frame.loc[positions, column] = values
    frame.loc[positions, names.success] = [r.success for r in results]
    frame.loc[positions, names.error_message] = [r.error_message or None for r in results]


def results_schema(first: pd.DataFrame, service: WebService) -> pa.Schema:
    """A stable Arrow schema for every chunk: inputs as inferred from the first chunk, outputs as declared."""
    declared = {o.name: _ARROW_TYPES[result_column(o.type)] for o in service.outputs}
    inferred = pa.Schema.from_pandas(first, preserve_index=False)
    fields = []
    for field in inferred:
        if field.name in ("success",):
            fields.append(pa.field(field.name, pa.bool_()))
        elif field.name == "error_message":
            fields.append(pa.field(field.name, pa.string()))
        elif field.name in ("record", "attempts"):
            fields.append(pa.field(field.name, pa.int64()))
        elif field.name in declared or field.name.removeprefix("output_") in declared:
            key = field.name if field.name in declared else field.name.removeprefix("output_")
            fields.append(pa.field(field.name, declared[key]))
        elif pa.types.is_null(field.type):
            fields.append(pa.field(field.name, pa.string()))
        else:
            fields.append(field)
    return pa.schema(fields)


class ResultsWriter:
    """Writes result chunks to ``path`` (Parquet or CSV) under a temporary name; :meth:`commit` moves it in place.

    :param path: The destination, an ``ObjectStoragePath``.
    :param fmt: ``parquet`` or ``csv``.
    :param service: The service, whose declared outputs fix the output columns' types.
    """

    def __init__(self, path: Any, fmt: ResultsFormat, service: WebService) -> None:
        if fmt not in ("parquet", "csv"):
            raise MLServerConfigError(f"results format {fmt!r} is not supported: use parquet or csv.")
        self.path = path
        self.fmt = fmt
        self.service = service
        self.tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self.rows = 0
        self._handle: Any = None
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self._schema is None:
            self._schema = results_schema(frame, self.service)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.tmp.open("wb")
            if self.fmt == "parquet":
                self._writer = pq.ParquetWriter(self._handle, self._schema)
            else:
                self._writer = pa_csv.CSVWriter(self._handle, self._schema)
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False, safe=False)
        self._writer.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        """Close the temporary file and move it to the destination (replacing an older result)."""
        if self._writer is None:
            raise ValueError("no results were written")
        self._writer.close()
        self._handle.close()
        if self.path.exists():
            self.path.unlink()
        self.tmp.rename(self.path)

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._handle is not None:
                self._handle.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
