"""What every route needs: the server's context object, the rules of names, and reading a request body.

A request body is read by one rule, whatever the route: JSON in UTF-8, with finite numbers and at most
:data:`MAX_DEPTH` levels of nesting. Anything else is a 400 whose JSON message says what is wrong, never a
crash of the JSON decoder (a deeply nested body raises ``RecursionError``) answered as a plain-text 500.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.server import runtimes
from airflow_mlserver.server.config import ServerConfig
from airflow_mlserver.server.errors import bad_request, not_found
from airflow_mlserver.server.runner import BatchRunner
from airflow_mlserver.server.store import Store
from airflow_mlserver.server.workers import WorkerPool

T = TypeVar("T")


@dataclass
class ServerContext:
    """The server's state: a route has it as a parameter of type :data:`Ctx`."""

    config: ServerConfig
    store: Store
    pool: WorkerPool
    runner: BatchRunner
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: When the server started (``/status`` answers its uptime).
    started: float = field(default_factory=time.time)

    def service(self, name: str, version: str) -> tuple[dict[str, Any], str]:
        """A published service version and its revision; a 400 for a name that cannot be one, else a 404."""
        check_name("service name", name)
        check_name("service version", version)
        found = self.store.get_service(name, version)
        if found is not None:
            return found
        versions = [s["version"] for s in self.store.list_services(name)]
        if versions:
            raise not_found(
                f"Web service {quoted(name)} has no version {quoted(version)}. Published versions: "
                f"{shortened(', '.join(versions))}."
            )
        raise not_found(
            f"Web service {quoted(name)} not found. List the published services with GET /services."
        )


async def context(request: Request) -> ServerContext:
    """The dependency behind :data:`Ctx` (a coroutine: FastAPI would run a plain function in a thread)."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


#: A route's parameter for the server's context: ``async def route(ctx: Ctx, ...)``.
Ctx = Annotated[ServerContext, Depends(context)]


# -- names ----------------------------------------------------------------------------------------------------

#: What a service name or version, or a batch execution id, may be (an execution id is a UUID).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: What a plain file name (an artifact, a declared output file) may not hold.
_NOT_IN_FILE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_name(what: str, value: str) -> None:
    """A 400 for a name that cannot be one: refused as invalid, not answered "not found"."""
    if not _NAME.match(value):
        raise bad_request(
            f"Invalid {what} {quoted(value)}: use letters, digits, '_', '.' or '-' (at most 128), starting with a "
            "letter or digit."
        )


def plain_file_name(name: str) -> bool:
    """Whether ``name`` names a file right inside a folder: no path separator, no control character."""
    return bool(name) and name not in (".", "..") and _NOT_IN_FILE_NAME.search(name) is None


# -- request bodies -------------------------------------------------------------------------------------------

#: Deepest nesting of a request body, as .NET's JSON readers allow by default (the contract's types need 3).
MAX_DEPTH = 64
#: A ``\ud800``-``\udfff`` escape: then the strings are checked for a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels"
_OUT_OF_RANGE = "holds a number out of the range of a double (beyond 1.8e308)"


class _NotJson(ValueError):
    """A constant JSON does not have (NaN, Infinity), met while decoding."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"holds {name}, which is not JSON (send null for a missing value)")


def parse_json(raw: bytes, expected: str) -> Any:
    """A request body (``expected`` says what it should be) decoded as JSON, or a 400 saying why it is not.

    An empty body is ``None``.
    """
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"The request body is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}); "
            f"expected {expected}, as JSON in UTF-8."
        ) from None
    problem = ""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except _NotJson as exc:
        problem = str(exc)
    except RecursionError:
        problem = _TOO_DEEP
    except json.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON ({exc}); expected {expected}.") from None
    except ValueError:
        problem = f"holds a number of more than {sys.get_int_max_str_digits()} digits"
    if not problem:
        problem = _deep_or_infinite(value)
    if not problem and _SURROGATE_ESCAPE.search(text) and not all(map(_unicode, _strings(value))):
        problem = "holds a lone surrogate escape (\\ud800 to \\udfff), which is not Unicode text"
    if problem:
        raise bad_request(f"The request body {problem}; expected {expected}.")
    return value


def _deep_or_infinite(value: Any) -> str:
    """What is wrong with a decoded body, walked level by level: too deep, a number that overflowed; or ""."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            return _TOO_DEEP
        below: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is float and item - item != 0:  # 1e999 decodes to infinity
                return _OUT_OF_RANGE
            children = item.values() if kind is dict else item if kind is list else ()
            for child in children:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
                elif kind is float and child - child != 0:
                    return _OUT_OF_RANGE
        level = below
    return ""


def _strings(value: Any) -> Iterator[str]:
    """Every string in a decoded body, keys included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            yield item
        elif type(item) is dict:
            stack += [*item, *item.values()]
        elif type(item) is list:
            stack += item


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_json(request: Request, kind: type[T], expected: str) -> T:
    """The request body parsed as JSON of the given kind, or a 400 naming what was expected."""
    value = parse_json(await request.body(), expected)
    if not isinstance(value, kind):
        raise bad_request(f"The request body must be {expected}, not {type(value).__name__}.")
    return value


def optional_text(body: dict[str, Any], key: str) -> str | None:
    """``body[key]`` when it is a string, None when absent or null; a 400 when it is anything else."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string, not {type(value).__name__}.")
    return value


def requested_runtime(body: dict[str, Any]) -> runtimes.Runtime:
    """The runtime a request's ``runtimeType`` names in any case (the default one when it names none); a 400 for
    a name no runtime has."""
    try:
        return runtimes.get(optional_text(body, "runtimeType") or runtimes.DEFAULT.name)
    except runtimes.UnknownRuntimeError as exc:
        raise bad_request(str(exc)) from None


def current_user(request: Request) -> str:
    user: str = request.scope.get("mlserver.user", "")
    return user
