"""Python services in a worker: the service's code run with ``exec`` in a namespace of its own.

Per service revision and worker: a namespace holding the service's model objects (dill files named after their
variable), where ``initCode`` runs once. Per record: a shallow copy of that namespace with the inputs bound as
Python values (:func:`bind_input`, the Python client's rules), ``code`` run there in the record's working folder,
and each declared output read back by name and encoded as JSON (:func:`encode_output`).

This module imports only the standard library (and the pure-data table of parameter types) at import time;
numpy, pandas and dill are imported when a service needs them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import math
import os
import sys
from pathlib import Path
from typing import Any

from airflow_mlserver.client.parameters import PARAMETER_TYPES, Binding
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.server.runtimes.protocol import InputError, Job, bind_inputs, format_error


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


class PythonService:
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
            return format_error(exc), console.getvalue(), {}
        return "", console.getvalue(), outputs
