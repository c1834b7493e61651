"""What runs inside a worker process for a service published with ``runtimeType`` R: R embedded with rpy2.

R runs inside the worker process itself (rpy2 embeds it) rather than in an ``Rscript`` started per record or
in a separate R server: a record costs no process start (R takes about a second to start and load its base
packages), input and output values cross between Python and R as R vectors built and read in memory (no
text serialization in between, so no precision lost and no parser to escape), and R's own error conditions
are caught in R (``tryCatch``) with R's message and call. A worker that runs past the execution timeout is
killed and replaced with its R, exactly as for Python.

This module is imported, and R started, when a worker first loads an R service (the loader of the registry's
R entry): workers start fast, and Python-only users need neither R nor rpy2. Per service revision and worker: a
fresh R environment (a child of ``globalenv()``) holding the service's model objects (RDS files named after their
variable, read with ``readRDS``), where ``initCode`` runs once. Per record: a new environment (a child of the
service's) with the inputs bound as R values, ``code`` evaluated there in the record's working folder, and each
declared output read back by name and encoded as JSON (see :func:`encode`, and :func:`bind` for the inputs).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_mlserver.client.parameters import PARAMETER_TYPES
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server.runtimes.protocol import InputError, Job, bind_inputs

#: R helpers, defined once per worker in an environment of their own.
_HELPERS = r"""
list(
  load = function(files, names, init, scratch) {
    env <- new.env(parent = globalenv())
    tryCatch({
      for (i in seq_along(files)) assign(names[[i]], readRDS(files[[i]]), envir = env)
      if (length(init)) {
        old <- setwd(scratch)
        on.exit(setwd(old))
        exprs <- .parsed(init, "initCode")
        eval(exprs, env)
      }
      env
    }, error = function(e) .describe(e))
  },
  run = function(exprs, service, outputs, names, ...) {
    env <- new.env(parent = service)
    inputs <- list(...)
    for (i in seq_along(names)) assign(names[[i]], inputs[[i]], envir = env)
    tryCatch({
      withCallingHandlers(
        eval(exprs, env),
        warning = function(w) {
          call <- .call(w)
          where <- if (is.null(call)) "" else paste0("In ", .deparsed(call), " : ")
          message("Warning message:\n", where, conditionMessage(w))
          invokeRestart("muffleWarning")
        }
      )
      values <- vector("list", length(outputs))
      for (i in seq_along(outputs)) {
        where <- if (exists(outputs[[i]], envir = env, inherits = FALSE)) env else service
        if (!exists(outputs[[i]], envir = where, inherits = FALSE))
          stop(sprintf("the service code did not set its output '%s'", outputs[[i]]), call. = FALSE)
        values[i] <- list(get(outputs[[i]], envir = where, inherits = FALSE))
      }
      # which values are plain vectors (no attributes): Python reads those without asking for any
      list(values, vapply(values, function(v) !is.null(v) && is.atomic(v) && is.null(attributes(v)), NA))
    }, error = function(e) .describe(e))
  },
  frame = function(columns) tryCatch(
    data.frame(columns, check.names = FALSE, stringsAsFactors = FALSE),
    error = function(e) structure(conditionMessage(e), class = "mlserver_error")
  ),
  text = function(box) {  # boxed in a list: a call or a symbol passed bare would be evaluated
    x <- box[[1L]]
    if (inherits(x, c("Date", "POSIXt"))) as.character(x)
    else paste(utils::capture.output(print(x)), collapse = "\n")
  },
  parse = function(code) tryCatch(.parsed(code, "code"), error = function(e) .describe(e))
)
"""

#: How an R condition reads in an error message: as R prints it, ``Error in <call> : <message>``.
_DESCRIBE = r"""
.deparsed <- function(call) paste(deparse(call, nlines = 1L, width.cutoff = 200L), collapse = " ")
.call <- function(e) {  # a condition raised by the code's top level names no call, as in R's console
  call <- conditionCall(e)
  if (identical(call, quote(eval(exprs, env)))) NULL else call
}
.parsed <- function(text, what) tryCatch(
  parse(text = text, keep.source = FALSE),
  error = function(e) stop(sprintf("'%s' is not valid R: %s", what, conditionMessage(e)), call. = FALSE)
)
.describe <- function(e) {
  call <- .call(e)
  text <- if (is.null(call)) "Error: " else paste0("Error in ", .deparsed(call), " : ")
  structure(paste0(text, conditionMessage(e)), class = "mlserver_error")
}
"""

_INT32 = 2**31 - 1


class RError(Exception):
    """An R condition caught by the runtime; the message is R's (``Error in <call> : <message>``)."""


class _R:
    """The embedded R of this worker process: started on first use, and its console output collected."""

    _instance: _R | None = None

    def __init__(self) -> None:
        import rpy2.rinterface as ri
        from rpy2.rinterface_lib import callbacks

        # rpy2 installs its own SIGINT handler; the worker ignores signals meant for the server's group
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        os.environ["TMPDIR"] = _session_tempdir()
        ri.initr_simple()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        self.ri = ri
        self.console: list[str] | None = None
        callbacks.consolewrite_print = self._write
        callbacks.consolewrite_warnerror = self._write
        ri.evalr('options(bitmapType = "cairo")' if ri.evalr('capabilities("cairo")')[0] else "NULL")
        helpers_env = ri.evalr("new.env(parent = baseenv())")
        ri.evalr(_DESCRIBE, envir=helpers_env)
        helpers = ri.evalr(_HELPERS, envir=helpers_env)
        self.fn: dict[str, Callable[..., Any]] = dict(zip(helpers.names, helpers, strict=True))

    @classmethod
    def get(cls) -> _R:
        """This worker's R, started by the first R service it runs."""
        if cls._instance is None:
            try:
                cls._instance = _R()
            except ImportError as exc:
                raise RError(
                    f"R services need R and rpy2 where the server runs ({exc}): install R (Debian: apt-get "
                    "install r-base-core r-base-dev), then pip install 'airflow-mlserver[r]'."
                ) from None
            except Exception as exc:  # rpy2 found no R library, or R did not start
                raise RError(f"R could not be started in the worker: {type(exc).__name__}: {exc}") from None
        return cls._instance

    def _write(self, text: str) -> None:
        if self.console is not None:
            self.console.append(text)

    def call(self, name: str, *args: Any) -> Any:
        """Call one of the helpers; raise :class:`RError` with R's message if it caught an R error."""
        result = self.fn[name](*args)
        # only an error is character (and classed), but for text's: reading the type costs less than the class
        if result.typeof == self.ri.RTYPES.STRSXP and name != "text" and "mlserver_error" in _classes(result):
            raise RError(result[0])
        return result


def _session_tempdir() -> str:
    """Where this worker's R keeps its session's temporary folder (``tempdir()``), removed with the worker.

    R removes its temporary folder when it ends, but a worker never ends R (a process of ``multiprocessing``
    exits without running exit handlers, and a timed-out one is killed): each worker's R gets a folder named
    after its process, and each R start removes those of workers no longer running.
    """
    base = Path(tempfile.gettempdir())
    for folder in base.glob("mlserver-r-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = base / f"mlserver-r-{os.getpid()}"
    mine.mkdir(exist_ok=True)
    return str(mine)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _classes(x: Any) -> list[str]:
    """The class attribute of an R value (rpy2's ``rclass`` would ask R, many times slower)."""
    return _attribute(x, "class")


def _attribute(x: Any, name: str) -> list[Any]:
    try:
        return list(x.do_slot(name))
    except (LookupError, AttributeError):
        return []


# -- JSON inputs -> R values -----------------------------------------------------------------------------
def _atomic(values: list[Any], ri: Any) -> Any:
    """An R vector of a JSON list by its content: logical, numeric, character, or a list if nested."""
    present = [v for v in values if v is not None]
    if any(isinstance(v, list | dict) for v in present):
        return _list(values, ri)
    if all(isinstance(v, bool) for v in present):
        return ri.BoolSexpVector([ri.NA_Logical if v is None else v for v in values])
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return ri.FloatSexpVector([ri.NA_Real if v is None else float(v) for v in values])
    return ri.StrSexpVector([ri.NA_Character if v is None else _as_text(v) for v in values])


def _as_text(value: Any) -> str:
    """A scalar as R's ``c()`` would turn it into character (TRUE, 1, 1.5, text)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _list(values: list[Any] | dict[str, Any], ri: Any) -> Any:
    """An R list of JSON values (named for an object)."""
    items = list(values.values()) if isinstance(values, dict) else values
    converted = ri.ListSexpVector([_value(v, ri) for v in items])
    if isinstance(values, dict):
        converted.do_slot_assign("names", ri.StrSexpVector([str(k) for k in values]))
    return converted


def _value(value: Any, ri: Any) -> Any:
    if value is None:
        return ri.NULL
    if isinstance(value, list | dict):
        return _list(value, ri)
    return _atomic([value], ri)


def _matrix(rows: list[list[Any]], ri: Any) -> Any:
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise InputError(f"every row of a matrix must have the same length, got lengths {sorted(widths)}")
    ncol = widths.pop() if widths else 0
    by_column = [row[j] for j in range(ncol) for row in rows]
    if any(isinstance(v, list | dict) for v in by_column):
        raise InputError("matrix cells must be numbers, strings, booleans or null")
    matrix = _atomic(by_column, ri)
    matrix.do_slot_assign("dim", ri.IntSexpVector([len(rows), ncol]))
    return matrix


def _frame(value: dict[str, Any] | list[Any], r: _R) -> Any:
    if isinstance(value, dict):
        columns = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
    else:
        if not all(isinstance(row, dict) for row in value):
            raise InputError("a data.frame given as a list must be a list of row objects")
        names = list(dict.fromkeys(k for row in value for k in row))
        columns = {k: [row.get(k) for row in value] for k in names}
    ri = r.ri
    listed = ri.ListSexpVector([_atomic(v, ri) for v in columns.values()])
    listed.do_slot_assign("names", ri.StrSexpVector(list(columns)))
    try:
        return r.call("frame", listed)
    except RError as exc:
        raise InputError(str(exc)) from None


def bind(kind: str, value: Any, r: _R) -> Any:
    """Turn a JSON input value into the R value the service code sees.

    integer, numeric, character, logical: a length-one vector (``NA`` for null; an integer outside R's
    32-bit range becomes numeric); vector: a numeric, character or logical vector by content (a list if its
    elements are lists or objects); matrix: a matrix of the row-major list of rows; data.frame: a data.frame
    of an object of columns or of a list of row objects (character columns stay character).
    """
    declared = PARAMETER_TYPES.get(kind)
    if declared is None:
        raise InputError(f"unknown type {quoted(kind)}")
    ri = r.ri
    if value is None:
        missing = {
            "integer": (ri.IntSexpVector, ri.NA_Integer),
            "numeric": (ri.FloatSexpVector, ri.NA_Real),
            "character": (ri.StrSexpVector, ri.NA_Character),
            "logical": (ri.BoolSexpVector, ri.NA_Logical),
        }.get(kind)
        return missing[0]([missing[1]]) if missing else ri.NULL
    if not declared.accepts(value):
        raise InputError(f"expected {declared.expected}, got {quoted(value)}")
    if kind == "integer":
        whole = int(value)
        return ri.IntSexpVector([whole]) if abs(whole) <= _INT32 else ri.FloatSexpVector([float(whole)])
    if kind == "numeric":
        return ri.FloatSexpVector([float(value)])
    if kind == "character":
        return ri.StrSexpVector([value])
    if kind == "logical":
        return ri.BoolSexpVector([value])
    if kind == "vector":
        return _atomic(value, ri)
    if kind == "matrix":
        return _matrix(value, ri)
    return _frame(value, r)


# -- R values -> JSON outputs ----------------------------------------------------------------------------
def _scalar(value: Any) -> Any:
    """One element of an atomic R vector as JSON; rpy2's NA values (of types of their own) become null."""
    if type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return None if math.isnan(value) or math.isinf(value) else value
    return None


def _elements(x: Any, r: _R) -> list[Any]:
    """The values of an atomic R vector as JSON scalars (NA, NaN and infinities as null; factors as labels)."""
    classes = _classes(x)
    if "factor" in classes:
        labels = list(x.do_slot("levels"))
        return [None if type(code) is not int else labels[code - 1] for code in x]
    if "Date" in classes or "POSIXct" in classes:
        return [_scalar(v) for v in r.call("text", r.ri.ListSexpVector([x]))]
    return [_scalar(v) for v in x]


def encode(x: Any, r: _R) -> Any:
    """Turn whatever the service code left in an output variable into plain JSON.

    Length-one vectors become scalars and longer ones lists; a matrix a list of rows; a data.frame an object
    of columns; a named list an object, an unnamed one a list; NA (and NaN, infinities) null; factors their
    labels; dates their ISO text; anything else (a model, a function) the text R prints for it.
    """
    ri = r.ri
    if x is ri.NULL or x.typeof == ri.RTYPES.NILSXP:
        return None
    classes = _classes(x)
    if "data.frame" in classes:
        return {str(name): _column(col, r) for name, col in zip(x.names, x, strict=True)}
    if x.typeof == ri.RTYPES.VECSXP:
        names = list(x.names) if x.names is not ri.NULL else []
        values = [encode(v, r) for v in x]
        if names and all(type(n) is str and n for n in names):
            return dict(zip(names, values, strict=True))
        return values
    if x.typeof not in _ATOMIC:
        return str(r.call("text", r.ri.ListSexpVector([x]))[0])
    values = _elements(x, r)
    dims = _attribute(x, "dim")
    if len(dims) == 2 and "factor" not in classes:
        nrow, ncol = dims
        return [[values[i + j * nrow] for j in range(ncol)] for i in range(nrow)]
    return values[0] if len(values) == 1 else values


def _column(col: Any, r: _R) -> list[Any]:
    value = encode(col, r)
    return value if isinstance(value, list) else [value]


_ATOMIC: set[int] = set()


def _atomic_types(ri: Any) -> set[int]:
    t = ri.RTYPES
    return {t.LGLSXP, t.INTSXP, t.REALSXP, t.STRSXP}


def _plain(x: Any) -> Any:
    """A vector without attributes as JSON: what :func:`encode` gives, without asking R for attributes."""
    values = [_scalar(v) for v in x]
    return values[0] if len(values) == 1 else values


def _strings(names: list[str] | list[tuple[str, str]], ri: Any) -> Any:
    """A character vector of names (of ``(name, type)`` pairs: their names)."""
    return ri.StrSexpVector([n if isinstance(n, str) else n[0] for n in names])


# -- one service revision in this worker ------------------------------------------------------------------
class RService:
    """One R service revision loaded in this worker: its environment after ``initCode`` and parsed code.

    Raises :class:`RError` when R cannot start, the model objects cannot be read or ``initCode`` fails (R's
    message). ``code`` that is not valid R fails each record, with R's parse error.
    """

    def __init__(self, job: Job) -> None:
        self.r = r = _R.get()
        if not _ATOMIC:
            _ATOMIC.update(_atomic_types(r.ri))
        ri = r.ri
        objects = Path(job.objects_dir)
        files = sorted(objects.iterdir()) if objects.is_dir() else []
        init = [job.init_code] if job.init_code else []
        if init:
            Path(job.scratch_dir).mkdir(parents=True, exist_ok=True)
        self.output_names, self.input_types = list(job.output_names), list(job.input_types)
        self._outputs, self._inputs = _strings(self.output_names, ri), _strings(self.input_types, ri)
        r.console = None  # initCode's own output is not any execution's console output
        self.env = r.call(
            "load",
            ri.StrSexpVector([str(p) for p in files]),
            ri.StrSexpVector([p.name for p in files]),
            ri.StrSexpVector(init),
            ri.StrSexpVector([job.scratch_dir]),
        )
        try:
            self.code: Any = r.call("parse", ri.StrSexpVector([job.code]))
            self.invalid = ""
        except RError as exc:  # every record fails with it; the service itself loaded fine
            self.code, self.invalid = ri.NULL, str(exc)

    def evaluate(self, job: Job) -> tuple[str, str, dict[str, Any]]:
        """Run ``code`` for one record in the current working folder: (error, console output, outputs)."""
        r, ri = self.r, self.r.ri
        if self.invalid:
            return self.invalid, "", {}
        r.console = []
        try:
            inputs = [value for _, value in bind_inputs(job, lambda kind, value: bind(kind, value, r))]
            outputs_r = (
                self._outputs if job.output_names == self.output_names else _strings(job.output_names, ri)
            )
            inputs_r = self._inputs if job.input_types == self.input_types else _strings(job.input_types, ri)
            values, plain = r.call("run", self.code, self.env, outputs_r, inputs_r, *inputs)
            outputs = {
                name: _plain(v) if is_plain else encode(v, r)
                for name, v, is_plain in zip(job.output_names, values, plain, strict=True)
            }
            return "", "".join(r.console), outputs
        except (RError, InputError) as exc:
            return (f"InputError: {exc}" if isinstance(exc, InputError) else str(exc)), "".join(r.console), {}
        except Exception as exc:  # a value rpy2 cannot read: the record fails, the worker goes on
            return f"{type(exc).__name__}: {exc}", "".join(r.console), {}
        finally:
            r.console = None
