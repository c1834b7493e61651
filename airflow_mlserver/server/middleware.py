"""ASGI middleware of the local server: bearer-token check, request-size limit and fault injection.

Pure ASGI (no ``BaseHTTPMiddleware``) so that streamed answers stay streamed and the per-request cost
stays small.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_mlserver.server.auth import authenticate
from airflow_mlserver.server.context import ServerContext
from airflow_mlserver.server.errors import ApiError
from airflow_mlserver.server.faults import FaultInjector, dropping_send, holding_send

Scope = dict[str, Any]


async def send_error(send: Any, error: ApiError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class ServerMiddleware:
    """Checks the token of every route but ``/login``, caps body size, and injects faults when asked."""

    def __init__(self, app: Any, ctx: ServerContext) -> None:
        self.app = app
        self.ctx = ctx
        self.faults = FaultInjector.parse(ctx.config.faults)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.faults and not path.startswith("/login"):
            handled = await self.faults.before(scope, receive, send)
            if handled:
                return
            if scope.get("mlserver.drop_answer"):
                send = await dropping_send(send)
            elif "mlserver.hold_answer" in scope:
                send = holding_send(send, scope["mlserver.hold_answer"])
        limit = self.ctx.config.max_body_bytes
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        too_large = ApiError(
            413,
            f"The request body is larger than the server's limit of {limit} bytes: "
            "send fewer records per batch (split the data) or raise --max-body-mb.",
        )
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, too_large)
            return
        if not (path == "/login" or path.startswith("/login/")) or scope["method"] == "DELETE":
            try:
                scope["mlserver.user"] = authenticate(
                    self.ctx, headers.get(b"authorization", b"").decode("latin-1")
                )
            except ApiError as exc:
                await send_error(send, exc, [(b"www-authenticate", b"Bearer")])
                return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        started = False
        advertised = [(b"x-idempotency-keys", b"honoured")] if self.ctx.config.idempotency_keys else []

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if advertised:
                    message = {**message, "headers": [*message.get("headers", []), *advertised]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await send_error(send, too_large)
