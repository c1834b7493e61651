"""Triggers of one connection share one client per event loop (airflow_mlserver/hooks/shared.py), against the local
server: one login, one refresh for all, closed after the last trigger, a down server slows no other connection's
triggers, a new loop gets a new client; connection reads cached."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from airflow_mlserver.client.aio import AsyncDriver
from airflow_mlserver.client.protocol import Wire
from airflow_mlserver.hooks import shared
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from airflow_mlserver.triggers.batch import MLServerBatchTrigger
from tests.helpers import Api

_ids = itertools.count()


def _connection(
    monkeypatch: pytest.MonkeyPatch, server: LocalMLServer | None, port: int | None = None
) -> str:
    """A fresh connection id (so no token of another test is at hand) to ``server``, or to a closed port."""
    conn_id = f"mlserver_shared_{next(_ids)}"
    if server is not None:
        uri = f"mlserver://{server.username}:{quote(server.password, safe='')}@127.0.0.1:{server.port}"
    else:
        uri = f"mlserver://admin:pw@127.0.0.1:{port}?max_retries=0"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", uri)
    return conn_id


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many requests were sent to each path (the client's one send method, wrapped: it still sends)."""
    counted: Counter[str] = Counter()
    send_once = AsyncDriver._send_once

    async def counting(self: AsyncDriver, session: Any, wire: Wire) -> Any:
        counted[wire.spec.path] += 1
        return await send_once(self, session, wire)

    monkeypatch.setattr(AsyncDriver, "_send_once", counting)
    return counted


def _trigger(conn_id: str, ids: list[str], poll_interval: float = 0.2, **kwargs: Any) -> MLServerBatchTrigger:
    return MLServerBatchTrigger(
        mlserver_conn_id=conn_id,
        service_name="shared",
        service_version="v1",
        execution_ids=ids,
        poll_interval=poll_interval,
        **kwargs,
    )


async def _first_event(trigger: MLServerBatchTrigger) -> dict[str, Any]:
    """The trigger's one event, its ``run()`` run to its end as the triggerer does."""
    (event,) = [event.payload async for event in trigger.run()]
    return dict(event)


@pytest.fixture(scope="module")
def service(api: Api) -> None:
    api.publish("shared", "v1", "import time\ntime.sleep(x)\ny = x", {"x": "numeric"}, {"y": "numeric"})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_many_triggers_share_one_client_log_in_once_and_close_it_after_the_last(
    api: Api, service: None, monkeypatch: pytest.MonkeyPatch, sends: Counter[str]
) -> None:
    conn_id = _connection(monkeypatch, api.server)
    # none done before every trigger holds the client (which takes a few milliseconds)
    quick = [api.start_batch("shared", "v1", [{"x": 1.0}], 1) for _ in range(3)]
    slow = api.start_batch("shared", "v1", [{"x": 2.0}], 1)
    # triggers that end in different orders: done at once, done later, still waiting (cancelled)
    triggers = [_trigger(conn_id, [quick[i % 3]]) for i in range(20)] + [_trigger(conn_id, [slow])]
    # long, yet stopped within a record's 0.2 s once deleted (a server stops an execution between records): one
    # 60 s record would hold one of the module server's two workers for a minute after the test
    endless = api.start_batch("shared", "v1", [{"x": 0.2}] * 300, 1)
    waiting = [_trigger(conn_id, [endless], poll_interval=0.2) for _ in range(5)]

    async def scenario() -> tuple[list[dict[str, Any]], MLServerHook, list[int]]:
        hook = await shared.acquire(conn_id)  # the one the triggers get too
        ended = asyncio.gather(*(_first_event(t) for t in triggers))
        stuck = [asyncio.create_task(_first_event(t)) for t in waiting]
        for _ in range(200):  # until every trigger holds the client (a busy machine takes a while)
            if shared.shared_stats().users.get(conn_id) == 27:
                break
            await asyncio.sleep(0.05)
        users = [shared.shared_stats().users[conn_id]]
        assert shared.shared_stats().hooks == 1
        await shared.release(hook)
        events = await ended
        users.append(shared.shared_stats().users.get(conn_id, 0))
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        users.append(shared.shared_stats().users.get(conn_id, 0))
        return events, hook, users

    events, first_hook, users = asyncio.run(scenario())
    api.delete(f"/api/shared/v1/batch/{endless}")
    assert [e["status"] for e in events] == ["complete"] * 21
    assert users == [27, 5, 0]  # 26 triggers and this test; then the 5 still waiting; then none
    assert sends["/login"] == 1  # for all 26 triggers
    assert first_hook._client is not None and first_hook._client.aio._session is None  # closed


def test_the_last_trigger_to_end_closes_the_client_whatever_the_order(
    api: Api, service: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = _connection(monkeypatch, api.server)

    async def scenario(order: list[int]) -> tuple[MLServerHook, list[bool]]:
        ids = [api.start_batch("shared", "v1", [{"x": x}], 1) for x in (0.0, 1.0, 2.0)]  # fresh each time
        hook = await shared.acquire(conn_id)
        tasks = [asyncio.create_task(_first_event(_trigger(conn_id, [ids[i]]))) for i in order]
        for _ in range(100):  # until the triggers hold it too (or the quickest is done already)
            if shared.shared_stats().users.get(conn_id) == 4 or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.02)
        await shared.release(hook)  # they hold it now
        closed: list[bool] = []
        for task in asyncio.as_completed(tasks):
            await task
            closed.append(hook._client is None or hook._client.aio._session is None)
        return hook, closed

    for order in ([0, 1, 2], [2, 0, 1]):
        _, closed = asyncio.run(scenario(order))
        assert closed == [False, False, True]
    assert shared.shared_stats().hooks == 0


def test_an_expiring_token_is_refreshed_once_for_all_triggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sends: Counter[str]
) -> None:
    with LocalMLServer(tmp_path, workers=2, extra_args=["--token-ttl", "3"]) as server:
        api = Api(server)
        api.publish("shared", "v1", "import time\ntime.sleep(x)\ny = x", {"x": "numeric"}, {"y": "numeric"})
        conn_id = _connection(monkeypatch, server)
        ids = [api.start_batch("shared", "v1", [{"x": 7.0}], 1) for _ in range(2)]
        triggers = [_trigger(conn_id, [ids[i % 2]], poll_interval=0.1) for i in range(30)]

        async def scenario() -> list[dict[str, Any]]:
            return await asyncio.gather(*(_first_event(t) for t in triggers))

        started = time.monotonic()
        events = asyncio.run(asyncio.wait_for(scenario(), 60))
        elapsed = time.monotonic() - started
    assert [e["status"] for e in events] == ["complete"] * 30
    assert elapsed > 6  # two lifetimes of the token at least
    assert sends["/login"] == 1
    # refreshed ahead of expiry, once per lifetime for all 30 triggers (a lifetime of 2 to 3 s, renewed half a
    # second ahead); never a 401's re-login
    assert 1 <= sends["/login/refreshToken"] <= elapsed / 1.5 + 1


def test_a_down_server_does_not_slow_the_triggers_of_another_connection(
    api: Api, service: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = _connection(monkeypatch, api.server)
    down = _connection(monkeypatch, None, port=_closed_port())
    ids = [api.start_batch("shared", "v1", [{"x": 0}], 1) for _ in range(4)]
    for execution_id in ids:
        api.wait("shared", "v1", execution_id)
    interval = 0.5
    polls: list[float] = []
    get_batch = MLServerHook.async_get_batch

    async def timed(self: MLServerHook, *args: Any, **kwargs: Any) -> Any:
        if self.mlserver_conn_id == up:
            polls.append(time.monotonic())
        return await get_batch(self, *args, **kwargs)

    monkeypatch.setattr(MLServerHook, "async_get_batch", timed)

    async def scenario() -> tuple[list[dict[str, Any]], float]:
        stuck = [
            asyncio.create_task(_first_event(_trigger(down, [f"e{i}"], poll_interval=interval)))
            for i in range(20)
        ]
        await asyncio.sleep(0.2)  # the down server's triggers are failing and backing off
        started = time.monotonic()
        events = await asyncio.gather(
            *(_first_event(_trigger(up, [i], poll_interval=interval)) for i in ids * 5)
        )
        took = time.monotonic() - started
        assert not any(task.done() for task in stuck)  # still retrying the down server
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        return events, took

    events, took = asyncio.run(scenario())
    assert [e["status"] for e in events] == ["complete"] * 20
    assert len(polls) == 20
    assert took < interval + 1.0  # each looked once, within its first poll interval


def test_a_new_event_loop_gets_a_new_client(api: Api, service: None, monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = _connection(monkeypatch, api.server)

    async def held() -> tuple[MLServerHook, Any]:
        hook = await shared.acquire(conn_id)
        try:
            await hook.async_list_batch_executions("shared", "v1")
            assert hook._client is not None
            return hook, hook._client.aio._session
        finally:
            await shared.release(hook)

    first, first_session = asyncio.run(held())
    second, second_session = asyncio.run(held())
    assert first is not second and first._client is not second._client
    assert first_session is not second_session and first_session.closed and second_session.closed

    # a loop that closed while a hook was held leaves nothing behind for the next
    loop = asyncio.new_event_loop()
    kept = loop.run_until_complete(shared.acquire(conn_id))
    loop.close()
    fresh, _ = asyncio.run(held())
    assert fresh is not kept and shared.shared_stats().loops == 0


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The connection ids Airflow was asked for (its async read, wrapped: it still reads)."""
    asked: list[str] = []
    read = MLServerHook.aget_connection.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[MLServerHook], conn_id: str) -> Any:
        asked.append(conn_id)
        return await read(cls, conn_id)

    monkeypatch.setattr(MLServerHook, "aget_connection", classmethod(counting))
    yield asked


def test_connection_reads_are_cached_for_a_while_and_a_changed_variable_is_read_again(
    mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch, reads: list[str]
) -> None:
    conn_id = _connection(monkeypatch, mlserver)

    async def burst() -> None:
        await asyncio.gather(*(shared.cached_connection(conn_id) for _ in range(50)))

    asyncio.run(burst())
    asyncio.run(burst())  # another loop, within the TTL
    assert reads == [conn_id]
    monkeypatch.setattr(shared, "CONNECTION_TTL", 0.0)
    asyncio.run(burst())
    assert reads == [conn_id, conn_id]  # past the TTL: read again
    monkeypatch.setattr(shared, "CONNECTION_TTL", 60.0)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", "mlserver://admin:other@127.0.0.1:1")
    conn = asyncio.run(shared.cached_connection(conn_id))
    assert conn.password == "other" and len(reads) == 3


@pytest.mark.parametrize(
    ("interval", "sharing", "deadline_in", "most"),
    [
        (10.0, 1, None, 0.02),  # a trigger alone looks (almost) at once
        (10.0, 0, None, 0.02),
        (10.0, 50, None, 1.0),  # a burst of 50: spread over a second
        (10.0, 1_000, None, 10.0),  # a thousand: over one poll interval, never more
        (2.0, 1_000, None, 2.0),
        (10.0, 1_000, 0.5, 0.5),  # never past the deadline
        (10.0, 1_000, -5.0, 0.0),
        (0.0, 1_000, None, 0.0),
    ],
)
def test_first_polls_are_spread_by_how_many_share_the_connection(
    interval: float, sharing: int, deadline_in: float | None, most: float
) -> None:
    from airflow_mlserver.executions.waiting import first_wait

    deadline = None if deadline_in is None else time.time() + deadline_in
    waits = [first_wait(f"execution-{i}", interval, sharing, deadline) for i in range(2_000)]
    assert all(0.0 <= wait <= most + 1e-6 for wait in waits)
    if deadline is None:  # fixed by the ids (a restarted triggerer spreads them the same way)
        assert waits == [first_wait(f"execution-{i}", interval, sharing, None) for i in range(2_000)]
    if most >= 1.0:  # spread, not bunched: each tenth of the window holds about a tenth of the first polls
        tenths = Counter(min(int(wait / most * 10), 9) for wait in waits)
        assert all(150 <= tenths[k] <= 250 for k in range(10)), tenths


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The addresses this process's event loops opened TCP connections to (the loop's connect, wrapped: it still
    connects)."""
    from asyncio.selector_events import BaseSelectorEventLoop

    opened: list[Any] = []
    connect = BaseSelectorEventLoop.sock_connect

    async def counting(self: BaseSelectorEventLoop, sock: socket.socket, address: Any) -> None:
        opened.append(address)
        await connect(self, sock, address)

    monkeypatch.setattr(BaseSelectorEventLoop, "sock_connect", counting)
    return opened


def test_status_polls_keep_their_connection_unless_the_rest_of_the_answer_is_large(
    api: Api, service: None, monkeypatch: pytest.MonkeyPatch, connects: list[Any]
) -> None:
    """A status poll reads only the head of an answer that may carry every result: a small rest is read anyway so
    that the keep-alive connection serves the next poll; a large one (over 16 KiB) is cut, closing it."""
    conn_id = _connection(monkeypatch, api.server)
    small = api.start_batch("shared", "v1", [{"x": 0}] * 10, 10)
    large = api.start_batch("shared", "v1", [{"x": 0}] * 1_500, 10)  # about 150 KB of results
    for execution_id in (small, large):
        api.wait("shared", "v1", execution_id)

    async def polls(execution_id: str) -> int:
        async with shared.shared_hook(conn_id) as hook:
            await hook.async_get_batch("shared", "v1", execution_id)  # logged in, one connection open
            before = len(connects)
            for _ in range(20):
                status = await hook.async_get_batch("shared", "v1", execution_id)
                assert status.state == "Complete" and status.completed == status.total
            return len(connects) - before

    assert asyncio.run(polls(small)) == 0
    assert asyncio.run(polls(large)) == 20
