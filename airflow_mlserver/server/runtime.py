"""What runs inside a worker process: the Python runtime of a published service.

A worker keeps one namespace per service revision: the service's model objects (its snapshot) are
loaded and its ``initCode`` run once, the first time that worker runs the service. Each execution
then gets a shallow copy of that namespace with the inputs bound as variables, runs ``code`` in a
fresh working folder, and reads each declared output back by name.

This module imports only the standard library (and the pure-data table of parameter types) at import time
so that workers start fast; numpy, pandas and dill are imported when a service needs them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import math
import os
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlserver.client.parameters import PARAMETER_TYPES, Binding
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server.files import regular_files


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one execution of a service (built by ``jobs.build_job``).

    :param key: The service revision; a worker keeps a loaded service under it.
    :param code: The service's ``code``.
    :param init_code: Its ``initCode``, run once per worker before the first execution.
    :param objects_dir: Where its model objects are (dill files named after their variable).
    :param scratch_dir: The working folder of ``initCode``.
    :param inputs: The input values (JSON), by input name.
    :param input_types: Each declared input's name and type, in declared order.
    :param output_names: The declared outputs, read back from the code's variables.
    :param output_files: Files the code may write that are returned (``outputFileNames``).
    :param workdir: The execution's fresh working folder.
    :param artifacts_only: Keep only the declared output files in ``workdir`` (a batch record's artifacts).
    """

    key: str
    code: str
    init_code: str | None
    objects_dir: str
    scratch_dir: str
    inputs: dict[str, Any]
    input_types: list[tuple[str, str]]
    output_names: list[str]
    output_files: list[str]
    workdir: str
    artifacts_only: bool = False


@dataclass(frozen=True)
class Outcome:
    """What came of one execution; ``init_failed`` when the service could not even be loaded."""

    success: bool
    error_message: str
    console_output: str = ""
    changed_files: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    init_failed: bool = False


class InputError(ValueError):
    """An input value does not fit its declared type."""


def bind_input(kind: str, value: Any) -> Any:
    """Turn a JSON input value into the Python value the service code sees (the Python client's rules)."""
    if value is None:
        return None
    declared = PARAMETER_TYPES.get(kind)
    if declared is None:
        raise InputError(f"unknown type {quoted(kind)}")
    if not declared.accepts(value):
        raise InputError(f"expected {declared.expected}, got {quoted(value)}")
    if declared.binds_to is Binding.NUMPY_ARRAY:
        import numpy as np

        return np.array(value)
    if declared.binds_to is Binding.DATA_FRAME:
        import pandas as pd

        return pd.DataFrame(value) if isinstance(value, dict) else pd.DataFrame.from_records(value)
    return declared.binds_to(value)


def encode_output(value: Any) -> Any:
    """Turn whatever the service code left in an output variable into plain JSON."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): encode_output(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [encode_output(v) for v in value]
    module = type(value).__module__.split(".")[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return {str(col): encode_output(value[col].tolist()) for col in value.columns}
        if isinstance(value, pd.Series | pd.Index):
            return encode_output(value.tolist())
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        if value is pd.NaT or value is pd.NA:
            return None
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return encode_output(value.tolist())
        if isinstance(value, np.generic):
            return encode_output(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class _ServiceRuntime:
    """One service revision loaded in this worker: its namespace after ``initCode`` and compiled code."""

    def __init__(self, job: Job) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        if os.path.isdir(job.objects_dir):
            import dill

            for path in sorted(Path(job.objects_dir).iterdir()):
                self.namespace[path.name] = dill.loads(path.read_bytes())
        self.code = compile(job.code, "<code>", "exec")
        if job.init_code:
            scratch = Path(job.scratch_dir)
            scratch.mkdir(parents=True, exist_ok=True)
            cwd = os.getcwd()
            os.chdir(scratch)
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    exec(compile(job.init_code, "<initCode>", "exec"), self.namespace)
            finally:
                os.chdir(cwd)


def _format_error(exc: BaseException) -> str:
    """The error text of a failed execution: the exception and the frames of the service's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<")]
    lines = [f"  line {f.lineno} in {f.name} ({f.filename[1:-1]})" for f in frames]
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return head + ("\n" + "\n".join(lines) if lines else "")


class Runtime:
    """The state of one worker process: a cache of loaded service revisions.

    :param home: The worker's own folder, where it returns after each execution.
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self._services: dict[str, _ServiceRuntime] = {}

    def run(self, job: Job) -> Outcome:
        service = self._services.get(job.key)
        if service is None:
            try:
                service = _ServiceRuntime(job)
            except BaseException as exc:
                error = f"initCode failed: {_format_error(exc)}"
                return Outcome(success=False, error_message=error, init_failed=True)
            self._services[job.key] = service
        return self._execute(service, job)

    def _execute(self, service: _ServiceRuntime, job: Job) -> Outcome:
        workdir = Path(job.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(service.namespace)
        console = io.StringIO()
        error = ""
        outputs: dict[str, Any] = {}
        try:
            for name, kind in job.input_types:
                try:
                    env[name] = bind_input(kind, job.inputs.get(name))
                except InputError as exc:
                    raise InputError(f"input '{name}' ({kind}): {exc}") from None
            os.chdir(workdir)
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                exec(service.code, env)
            for name in job.output_names:
                if name not in env:
                    raise NameError(f"the service code did not set its output '{name}'")
                outputs[name] = encode_output(env[name])
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            error = _format_error(exc)
        finally:
            os.chdir(self.home)
        changed = sorted(p.name for p in workdir.iterdir() if p.is_file())
        regular = set(regular_files(workdir, workdir))  # a link, even to a file, is not an artifact
        files = [f for f in job.output_files if f in regular]
        if job.artifacts_only:
            # batch records keep only their declared output files: they are the record's artifacts
            keep = set(files)
            for path in workdir.iterdir():
                if path.name not in keep:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            if not keep:
                workdir.rmdir()
        return Outcome(
            success=not error,
            error_message=error,
            console_output=console.getvalue(),
            changed_files=changed,
            outputs=outputs if not error else {},
            artifacts=files,
        )


def worker_main(conn: Any, home: str) -> None:
    """Entry point of a worker process: answer jobs from ``conn`` until told to stop."""
    import signal

    # The server owns its workers' lifetime: a signal sent to the whole process group (Ctrl-C, a service
    # manager's stop) must not kill a record mid-way; the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.chdir(home)
    runtime = Runtime(home)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(runtime.run(job))
