"""What runs inside a worker process: a published service's runtime, one record or one group of records at a time.

A worker keeps one loaded service per service revision: its model objects (its snapshot) are loaded and its
``initCode`` run once, the first time that worker runs the service. Where a runtime plugs in: :func:`load_service`
chooses the loaded-service class; any class with ``evaluate(job) -> (error, console output, outputs)`` (see
:class:`LoadedService`) runs there, and everything around a record (its working folder, its artifacts, its answer)
is :class:`Runtime`'s, the same for every runtime.

Each record runs in the worker's own scratch folder, emptied after each record: a record that writes no file
touches no other folder, and only a record's declared output files are moved into the record's folder (made
then). A batch arrives in groups (:class:`Group`): the service part is sent once per group, and the group's
results go back in one message (:class:`GroupDone`, each record's answer already JSON). Two numbers shared with
the server (:class:`Flags`) keep the per-record promises without a message per record: the worker writes which
record of the group it is running (the server times each record by it, and knows which one to fail when the
worker hangs or dies), and reads a stop flag before each record (a cancel or a shutdown ends the group there).

This module imports only the standard library (and the pure-data table of parameter types) at import time
so that workers start fast; numpy, pandas and dill are imported when a service needs them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from airflow_mlserver.client.parameters import PARAMETER_TYPES, Binding
from airflow_mlserver.client.quoting import quoted


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
    :param workdir: The execution's own folder, made only when it keeps a declared output file.
    :param runtime_type: The service's ``runtimeType``: ``Python`` or ``R`` (see :func:`load_service`).
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
    runtime_type: str = "Python"


class GroupRecord(NamedTuple):
    """One record of a group: its index in the batch and its inputs as stored (JSON text)."""

    record_index: int
    inputs: str


@dataclass(frozen=True)
class Group:
    """Records of one batch execution for one worker.

    :param job: The service part, sent once per group (its ``inputs`` and ``workdir`` unused).
    :param records: The records, run in this order.
    :param folder: The execution's folder: a record's artifacts go to ``<folder>/<index>``.
    """

    job: Job
    records: list[GroupRecord]
    folder: str


class RecordDone(NamedTuple):
    """One record of a group has run: whether it succeeded, and its result as the JSON text of its answer."""

    record_index: int
    success: bool
    result: str


class GroupDone(NamedTuple):
    """A worker's answer to a group: the records it ran, in order (fewer when stopped; none on ``init_error``).

    ``seconds`` is the time the records took, without loading the service (it sizes the next groups).
    """

    done: list[RecordDone]
    init_error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Flags:
    """What a worker shares with the server during a group (``multiprocessing`` RawValues, no message needed).

    :ivar stop: Set by the server: the worker runs no further record of the group.
    :ivar position: Set by the worker: which record of the group (0-based) it is running; -1 while it loads the
        service, the group's length once done.
    """

    stop: Any
    position: Any


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


def answer(outcome: Outcome, files: dict[str, str]) -> dict[str, Any]:
    """An outcome in the consume-answer shape of the contract (also each batch record's result)."""
    return {
        "success": outcome.success,
        "errorMessage": outcome.error_message,
        "consoleOutput": outcome.console_output,
        "changedFiles": outcome.changed_files,
        "outputParameters": outcome.outputs,
        "outputFiles": files,
    }


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def answer_text(outcome: Outcome) -> str:
    """A batch record's result as stored: its answer as compact JSON (artifacts are read through the files routes)."""
    return _COMPACT.encode(answer(outcome, {}))


def record_job(service_part: Job, inputs: dict[str, Any], workdir: str) -> Job:
    """``service_part`` with one record's inputs and folder: a copy of its fields, not a ``dataclasses.replace``.

    Frozen dataclasses refuse attribute assignment, not a new instance's own ``__dict__``; this runs for every
    record of a batch, and ``replace`` (which rebuilds through ``__init__``) costs several times more.
    """
    job = object.__new__(Job)
    fields = job.__dict__
    fields.update(service_part.__dict__)
    fields["inputs"] = inputs
    fields["workdir"] = workdir
    return job


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


def bind_inputs(job: Job, bind: Callable[[str, Any], Any]) -> list[tuple[str, Any]]:
    """Each declared input's name and its value as ``bind(kind, value)`` makes it for a runtime; an
    :class:`InputError` names the input whose value does not fit its type."""
    bound = []
    for name, kind in job.input_types:
        try:
            bound.append((name, bind(kind, job.inputs.get(name))))
        except InputError as exc:
            raise InputError(f"input '{name}' ({kind}): {exc}") from None
    return bound


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


class LoadedService(Protocol):
    """A service revision loaded in a worker, whatever its runtime (built by :func:`load_service`)."""

    def evaluate(self, job: Job) -> tuple[str, str, dict[str, Any]]:
        """Run ``code`` for one record in the current working folder: (error, console output, outputs)."""
        ...


class _ServiceRuntime:
    """One Python service revision loaded in this worker: its namespace after ``initCode`` and compiled code."""

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

    def evaluate(self, job: Job) -> tuple[str, str, dict[str, Any]]:
        """Run ``code`` on a shallow copy of the namespace with the inputs bound as variables."""
        env = dict(self.namespace)
        console = io.StringIO()
        outputs: dict[str, Any] = {}
        saved = sys.stdout, sys.stderr
        try:
            env.update(bind_inputs(job, bind_input))
            # what contextlib.redirect_stdout does, at a fraction of its cost
            sys.stdout = sys.stderr = console
            try:
                exec(self.code, env)
            finally:
                sys.stdout, sys.stderr = saved
            for name in job.output_names:
                if name not in env:
                    raise NameError(f"the service code did not set its output '{name}'")
                outputs[name] = encode_output(env[name])
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            return _format_error(exc), console.getvalue(), {}
        return "", console.getvalue(), outputs


def load_service(job: Job) -> LoadedService:
    """Load a service revision in this worker: the one place a runtime is chosen."""
    if job.runtime_type == "R":  # imported (and R started) by a worker's first R service
        from airflow_mlserver.server.runtime_r import RServiceRuntime

        return RServiceRuntime(job)
    return _ServiceRuntime(job)


def _format_error(exc: BaseException) -> str:
    """The error text of a failed execution: the exception and the frames of the service's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<")]
    lines = [f"  line {f.lineno} in {f.name} ({f.filename[1:-1]})" for f in frames]
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return head + ("\n" + "\n".join(lines) if lines else "")


class Runtime:
    """The state of one worker process: a cache of loaded service revisions and a scratch folder.

    The scratch folder is held open: each record starts there (``fchdir``) and its files are listed, moved and
    removed through that descriptor, so a record that changed directory, or renamed or swapped its folder for a
    link, cannot send the next record, or the clean-up, elsewhere.

    :param home: The worker's own folder, where it loads services (its scratch folder is ``workers/<pid>``
        below it, where every execution runs).
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self.scratch = Path(home) / "workers" / str(os.getpid())
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._fd = self._open_scratch()
        self._services: dict[str, LoadedService] = {}

    def _open_scratch(self) -> int:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return os.open(self.scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _service(self, job: Job) -> LoadedService | str:
        """The loaded service of ``job``'s revision, or why ``initCode`` (or loading its objects) failed."""
        service = self._services.get(job.key)
        if service is None:
            # out of a scratch folder the last record may have removed: loading reads the cwd
            os.chdir(self.home)
            try:
                service = load_service(job)
            except BaseException as exc:
                return f"initCode failed: {_format_error(exc)}"
            self._services[job.key] = service
        return service

    def run(self, job: Job) -> Outcome:
        """Run one execution (a request-response call)."""
        service = self._service(job)
        if isinstance(service, str):
            return Outcome(success=False, error_message=service, init_failed=True)
        return self._execute(service, job)

    def run_group(self, group: Group, flags: Flags) -> GroupDone:
        """Run a group's records in order; before each, say which one runs and stop if the server asks to."""
        flags.position.value = -1
        service = self._service(group.job)
        if isinstance(service, str):
            return GroupDone([], init_error=service)
        done: list[RecordDone] = []
        position = flags.position
        started = time.perf_counter()
        for i, record in enumerate(group.records):
            if flags.stop.value:
                break
            position.value = i
            job = record_job(group.job, json.loads(record.inputs), f"{group.folder}/{record.record_index}")
            outcome = self._execute(service, job)
            done.append(RecordDone(record.record_index, outcome.success, answer_text(outcome)))
        position.value = len(group.records)
        return GroupDone(done, seconds=time.perf_counter() - started)

    def _execute(self, service: LoadedService, job: Job) -> Outcome:
        if os.fstat(self._fd).st_nlink == 0:  # the last record removed the scratch folder: a new one
            os.close(self._fd)
            self._fd = self._open_scratch()
        os.fchdir(self._fd)
        error, console, outputs = service.evaluate(job)
        changed, files = self._collect(job)
        return Outcome(
            success=not error,
            error_message=error,
            console_output=console,
            changed_files=changed,
            outputs=outputs if not error else {},
            artifacts=files,
        )

    def _collect(self, job: Job) -> tuple[list[str], list[str]]:
        """The files a record left in the scratch folder, and its declared output files, moved to its folder.

        Everything else is removed: the next record finds the folder empty.
        """
        fd = self._fd
        with os.scandir(fd) as found:
            entries = list(found)
        if not entries:
            return [], []
        changed = sorted(e.name for e in entries if e.is_file())
        regular = {e.name for e in entries if e.is_file(follow_symlinks=False)}  # a link is not an artifact
        files = [f for f in job.output_files if f in regular]
        if files:
            workdir = Path(job.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            for name in files:
                try:
                    os.rename(name, workdir / name, src_dir_fd=fd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.move(self.scratch / name, workdir / name)  # the data folder spans two file systems
        for entry in entries:
            if entry.name in files:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, ignore_errors=True, dir_fd=fd)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)
        return changed, files


def worker_main(conn: Any, home: str, flags: Flags) -> None:
    """Entry point of a worker process: answer jobs and groups from ``conn`` until told to stop (None)."""
    import signal

    # The server owns its workers' lifetime: a signal sent to the whole process group (Ctrl-C, a service
    # manager's stop) must not kill a record mid-way; the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.chdir(home)
    runtime = Runtime(home)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            if isinstance(message, Group):
                conn.send(runtime.run_group(message, flags))
            else:
                conn.send(runtime.run(message))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return  # the server is gone: nobody reads what this worker runs any more
