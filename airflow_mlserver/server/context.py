"""What every route needs: the server's context object and small request helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from airflow_mlserver.server.config import ServerConfig
from airflow_mlserver.server.errors import bad_request, not_found
from airflow_mlserver.server.runner import BatchRunner
from airflow_mlserver.server.store import Store
from airflow_mlserver.server.workers import WorkerPool

T = TypeVar("T")


@dataclass
class ServerContext:
    """The server's state, reachable from a route as ``request.app.state.ctx``."""

    config: ServerConfig
    store: Store
    pool: WorkerPool
    runner: BatchRunner
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def service(self, name: str, version: str) -> tuple[dict[str, Any], str]:
        """A published service version and its revision, or a 404 that names what exists."""
        found = self.store.get_service(name, version)
        if found is not None:
            return found
        versions = [s["version"] for s in self.store.list_services(name)]
        if versions:
            raise not_found(
                f"Web service '{name}' has no version '{version}'. Published versions: {', '.join(versions)}."
            )
        raise not_found(f"Web service '{name}' not found. List the published services with GET /services.")


async def read_json(request: Request, kind: type[T], expected: str) -> T:
    """The request body parsed as JSON of the given kind, or a 400 naming what was expected."""
    raw = await request.body()
    try:
        value = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON ({exc}); expected {expected}.") from None
    if not isinstance(value, kind):
        raise bad_request(f"The request body must be {expected}, not {type(value).__name__}.")
    return value


def current_user(request: Request) -> str:
    user: str = request.scope.get("mlserver.user", "")
    return user
