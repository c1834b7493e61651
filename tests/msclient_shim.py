"""Run Microsoft's Python client (``azureml-model-management-sdk`` 1.0.1b6) on Python 3.8+.

The client builds each service's consume function (``svc.<operationId>(*inputs)``) with
``azureml.common.utils.function_beget``, which calls ``types.CodeType`` with the pre-3.8 argument
list and so raises ``TypeError`` on Python 3.11. This module replaces ONLY that helper, and only where
the client uses it (``azureml.deploy.server.service.function_beget``); the client's HTTP behaviour is
left untouched.

The client's template is ``def fn(self): args = locals(); ... props[name] = args[name] ...``: the new
function must take ``self`` and the service inputs as positional parameters, so that the template's
first statement, ``locals()``, sees them by name. As in the original helper, the template's bytecode
is kept and only the names and the count of its leading local slots change: the parameters take the
first slots, and the template's remaining locals keep their slots (renamed so they cannot collide
with an input's name). ``locals()`` runs before the template stores anything, so it sees exactly the
inputs (and ``self``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

PATCH_TARGET = "azureml.deploy.server.service.function_beget"


def function_beget(fn: Callable[..., Any], fn_name: str, fn_args: Sequence[str], doc: str = "") -> Any:
    """Python 3.8+ version of ``azureml.common.utils.function_beget``: same arguments, same result."""
    code = fn.__code__
    if code.co_freevars or code.co_cellvars:
        raise TypeError("function_beget: the template function must not use closures")
    args = tuple(str(a) for a in fn_args)
    # The template's locals beyond the parameters keep their slots (the bytecode addresses slots by
    # number); their names only label those slots, so make them unique.
    rest = tuple(f"_beget_{i}_{name}" for i, name in enumerate(code.co_varnames[len(args) :], len(args)))
    new_code = code.replace(
        co_argcount=len(args),
        co_posonlyargcount=0,
        co_kwonlyargcount=0,
        co_nlocals=len(args) + len(rest),
        co_varnames=args + rest,
        co_name=fn_name,
        co_qualname=fn_name,
    )
    new_fn = types.FunctionType(new_code, fn.__globals__, fn_name)
    new_fn.__doc__ = doc
    return new_fn


@contextmanager
def patched_client() -> Iterator[None]:
    """Within this block, the client's ``Service`` builds consume functions with :func:`function_beget`."""
    import azureml.deploy.server.service  # noqa: F401 - the module must be loaded to be patched

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PATCH_TARGET, function_beget)
        yield
