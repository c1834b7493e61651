"""One hook (one client) per connection and event loop, shared by the triggers of a process.

A triggerer runs hundreds of triggers in one event loop. Each with its own client would hold its own HTTP
connection pool, TLS context and aiohttp session, and read the connection itself. Here the triggers of one
connection share one :class:`MLServerHook` of the running loop: one pool, one token (the client's login is
single-flight, see :mod:`airflow_mlserver.client.auth`), one TLS context. ``async with shared_hook(conn_id)
as hook:`` counts its users; the last to leave closes it. It is kept by (connection id, loop): another loop
(a restarted triggerer, a test's ``asyncio.run``) gets its own, and a hook left behind by a loop that closed
without releasing it is dropped by the next acquisition.

Connection reads are cached in the process for :data:`CONNECTION_TTL` seconds: the start burst of a
triggerer reads each connection once, and a changed connection is picked up after the TTL (at once when it is
defined by an ``AIRFLOW_CONN_*`` environment variable whose value changed).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from airflow.sdk import Connection

from airflow_mlserver.hooks.mlserver import MLServerHook

#: Seconds a connection read stays cached in the process.
CONNECTION_TTL = 60.0

#: (conn_id, its environment variable's value) -> (when read, time.monotonic(); the connection).
_CONNECTIONS: dict[tuple[str, str | None], tuple[float, Connection]] = {}
#: conn_id -> the read under way (single-flight), with the loop it runs on.
_READING: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Connection]]] = {}


async def cached_connection(conn_id: str, ttl: float | None = None) -> Connection:
    """Airflow's connection ``conn_id`` (async read), read at most once per ``ttl`` seconds (default
    :data:`CONNECTION_TTL`) in the process; coroutines of one loop asking at once share one read."""
    ttl = CONNECTION_TTL if ttl is None else ttl
    key = (conn_id, os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}"))
    cached = _CONNECTIONS.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    loop = asyncio.get_running_loop()
    reading = _READING.get(conn_id)
    # (a read under way of an older value of the variable is still this burst's: good enough)
    if reading is not None and reading[0] is loop and not reading[1].done():
        try:
            return await asyncio.shield(reading[1])
        except asyncio.CancelledError:
            if not reading[1].cancelled():
                raise  # this coroutine was cancelled
            # the reader was: read here
    future: asyncio.Future[Connection] = loop.create_future()
    _READING[conn_id] = (loop, future)
    try:
        conn = await MLServerHook.aget_connection(conn_id)
    except BaseException as exc:
        if not future.done():
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: nobody may be waiting
            else:
                future.cancel()
        raise
    else:
        _CONNECTIONS[key] = (time.monotonic(), conn)
        future.set_result(conn)
        return conn
    finally:
        if _READING.get(conn_id, (None, None))[1] is future:
            del _READING[conn_id]


@dataclass
class _Shared:
    hook: MLServerHook
    lock: asyncio.Lock
    users: int = 0
    ready: bool = False


#: loop -> conn_id -> the shared hook of that connection on that loop.
_SHARED: dict[asyncio.AbstractEventLoop, dict[str, _Shared]] = {}


@dataclass
class SharedStats:
    """What :func:`shared_hook` holds now (for tests and benchmarks)."""

    loops: int = 0
    hooks: int = 0
    users: dict[str, int] = field(default_factory=dict)


def _here() -> dict[str, _Shared]:
    """The running loop's shared hooks by connection id (none outside a loop)."""
    try:
        return _SHARED.get(asyncio.get_running_loop(), {})
    except RuntimeError:
        return {}


def shared_stats() -> SharedStats:
    """How many loops and hooks are held, and the users of each connection of the running loop (if any)."""
    return SharedStats(
        loops=len(_SHARED),
        hooks=sum(len(h) for h in _SHARED.values()),
        users={conn_id: e.users for conn_id, e in _here().items()},
    )


def sharing(conn_id: str) -> int:
    """How many hold the running loop's shared hook of ``conn_id`` now (0 outside a loop or when none)."""
    entry = _here().get(conn_id)
    return entry.users if entry is not None else 0


def _drop_closed_loops() -> None:
    for loop in [loop for loop in _SHARED if loop.is_closed()]:
        del _SHARED[loop]  # its sessions cannot be closed any more; their sockets went with the loop


async def acquire(conn_id: str) -> MLServerHook:
    """The running loop's shared hook of ``conn_id``, its client ready (connection read, secrets masked);
    :func:`release` it once done."""
    _drop_closed_loops()
    loop = asyncio.get_running_loop()
    hooks = _SHARED.setdefault(loop, {})
    entry = hooks.get(conn_id)
    if entry is None:
        entry = hooks[conn_id] = _Shared(MLServerHook(mlserver_conn_id=conn_id), asyncio.Lock())
    entry.users += 1
    try:
        if not entry.ready:
            async with entry.lock:  # the first user builds the client; the others wait for it
                if not entry.ready:
                    await entry.hook.aget_conn(await cached_connection(conn_id))
                    entry.ready = True
    except BaseException:
        await _leave(loop, conn_id, entry)
        raise
    return entry.hook


async def release(hook: MLServerHook) -> None:
    """Give back a hook :func:`acquire` answered; the last user of it closes it."""
    loop = asyncio.get_running_loop()
    entry = _SHARED.get(loop, {}).get(hook.mlserver_conn_id)
    if entry is None or entry.hook is not hook:
        await hook.aclose()  # not (or no longer) shared: its own
        return
    await _leave(loop, hook.mlserver_conn_id, entry)


async def _leave(loop: asyncio.AbstractEventLoop, conn_id: str, entry: _Shared) -> None:
    entry.users -= 1  # before any await: a cancelled release still counts
    if entry.users > 0:
        return
    hooks = _SHARED.get(loop)
    if hooks is not None and hooks.get(conn_id) is entry:
        del hooks[conn_id]
        if not hooks:
            del _SHARED[loop]
    await entry.hook.aclose()


@asynccontextmanager
async def shared_hook(conn_id: str) -> AsyncIterator[MLServerHook]:
    """``async with shared_hook(conn_id) as hook:``: the running loop's shared hook of the connection."""
    hook = await acquire(conn_id)
    try:
        yield hook
    finally:
        await release(hook)
