"""Small raw-HTTP helpers for tests that speak the wire contract directly (no hook in between)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from airflow_mlserver.server.process import LocalMLServer

T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.5,
    error: type[Exception] = AssertionError,
) -> T:
    """Call ``probe`` until it answers something truthy (answered), or raise ``error`` after ``timeout`` seconds
    (a test fails; a benchmark may pass ``TimeoutError`` and carry on)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Api:
    """A logged-in ``requests`` session against a local server; paths are relative to its URL."""

    def __init__(
        self, server: LocalMLServer, username: str | None = None, password: str | None = None
    ) -> None:
        self.server = server
        self.session = requests.Session()
        self.login(username or server.username, password or server.password)

    def login(self, username: str, password: str) -> dict[str, Any]:
        answer = requests.post(
            f"{self.server.url}/login", json={"username": username, "password": password}, timeout=30
        )
        answer.raise_for_status()
        tokens: dict[str, Any] = answer.json()
        self.session.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        return tokens

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.server.url}{path}", **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def publish(
        self,
        name: str,
        version: str,
        code: str,
        inputs: dict[str, str],
        outputs: dict[str, str],
        init_code: str | None = None,
        files: list[str] | None = None,
    ) -> None:
        """Publish a Python service (replacing an existing one of that name and version)."""
        self.delete(f"/services/{name}/{version}")
        body = {
            "code": code,
            "initCode": init_code,
            "runtimeType": "Python",
            "inputParameterDefinitions": [{"name": k, "type": v} for k, v in inputs.items()],
            "outputParameterDefinitions": [{"name": k, "type": v} for k, v in outputs.items()],
            "outputFileNames": files or [],
            "description": f"test service {name}",
        }
        answer = self.post(f"/services/{name}/{version}", json=body)
        assert answer.status_code == 201, answer.text

    def start_batch(self, name: str, version: str, records: list[dict[str, Any]], parallel: int = 10) -> str:
        answer = self.post(f"/api/{name}/{version}/batch?parallelCount={parallel}", json=records)
        assert answer.status_code == 200, answer.text
        execution_id: str = answer.json()["batchExecutionId"]
        return execution_id

    def status(self, name: str, version: str, execution_id: str, partial: bool = False) -> dict[str, Any]:
        answer = self.get(
            f"/api/{name}/{version}/batch/{execution_id}?showPartialResults={str(partial).lower()}"
        )
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return status

    def workers_idle(self) -> bool:
        """No worker of the server runs anything: every group of records taken so far has ended and is committed.

        A lane frees its worker and commits its group's results in one step of the server's event loop, and
        takes its next group in that same step, so an execution that goes on never shows its workers idle.
        """
        busy: int = self.get("/status").json()["details"]["busyWorkers"]
        return busy == 0

    def wait(self, name: str, version: str, execution_id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll until the execution has finished; answer its full results."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(name, version, execution_id)
            if status["state"].lower() in ("complete", "failed", "canceled"):
                return self.status(name, version, execution_id, partial=True)
            time.sleep(0.1)
        raise AssertionError(f"execution {execution_id} did not finish in {timeout} s")


async def polled_once(hook: Any, service: str, version: str, execution_id: str) -> Any:
    """One async status poll through ``hook``, its async session closed after (as a trigger closes it)."""
    try:
        return await hook.async_get_batch(service, version, execution_id)
    finally:
        await hook.aclose()
