"""Section 1 of the contract: login, token refresh and revoke, and the bearer-token check.

Access and refresh tokens are random, expire (``token_ttl``, ``refresh_ttl``) and are persisted, so a
client's token survives a server restart as it would on a real server.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request

from airflow_mlserver.server.context import Ctx, ServerContext, read_json
from airflow_mlserver.server.errors import ApiError, bad_request

router = APIRouter()

ACCESS, REFRESH = "access", "refresh"


def issue_tokens(ctx: ServerContext, username: str) -> dict[str, Any]:
    now = time.time()
    access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires_on = int(now + ctx.config.token_ttl)
    ctx.store.add_token(access, ACCESS, username, expires_on)
    ctx.store.add_token(refresh, REFRESH, username, now + ctx.config.refresh_ttl)
    ctx.tokens[access] = (username, expires_on)
    return {
        "token_type": "Bearer",
        "access_token": access,
        "expires_in": ctx.config.token_ttl,
        "expires_on": expires_on,
        "refresh_token": refresh,
    }


def authenticate(ctx: ServerContext, header: str | None) -> str:
    """The user a ``Authorization: Bearer`` header belongs to, or a 401 that says why."""
    if not header:
        raise ApiError(
            401, "Missing Authorization header: log in with POST /login and send 'Bearer <access_token>'."
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Malformed Authorization header: expected 'Bearer <access_token>'.")
    token = token.strip()
    cached = ctx.tokens.get(token)
    if cached is None:
        row = ctx.store.get_token(token, ACCESS)
        if row is None or row[2]:
            raise ApiError(401, "Invalid access token: log in again with POST /login.")
        cached = (row[0], row[1])
        ctx.tokens[token] = cached
    username, expires_on = cached
    if expires_on <= time.time():
        ctx.tokens.pop(token, None)
        raise ApiError(
            401, "The access token has expired: refresh it with POST /login/refreshToken or log in again."
        )
    return username


@router.post("/login")
async def login(ctx: Ctx, request: Request) -> dict[str, Any]:
    body = await read_json(request, dict, 'a JSON object {"username": ..., "password": ...}')
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise bad_request("The login body needs 'username' and 'password' strings.")
    expected = ctx.config.all_users().get(username)
    if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
        raise ApiError(401, "Invalid username or password.")
    return issue_tokens(ctx, username)


@router.post("/login/refreshToken")
async def refresh(ctx: Ctx, request: Request) -> dict[str, Any]:
    body = await read_json(request, dict, 'a JSON object {"refreshToken": ...}')
    token = body.get("refreshToken")
    if not isinstance(token, str) or not token:
        raise bad_request("The refresh body needs a 'refreshToken' string.")
    row = ctx.store.get_token(token, REFRESH)
    if row is None or row[2] or row[1] <= time.time():
        raise ApiError(401, "Invalid, revoked or expired refresh token: log in again with POST /login.")
    ctx.store.revoke_token(token, REFRESH)
    return issue_tokens(ctx, row[0])


@router.delete("/login/refreshToken")
async def revoke(ctx: Ctx, request: Request, refreshToken: str = "") -> dict[str, Any]:
    authenticate(ctx, request.headers.get("authorization"))
    if not refreshToken:
        raise bad_request("Give the refresh token to revoke as ?refreshToken=...")
    if not ctx.store.revoke_token(refreshToken, REFRESH):
        raise ApiError(404, "Unknown refresh token.")
    return {}
