"""Fault injection, so that clients can be tested against the faults a long batch meets.

``--faults`` takes a comma-separated list of ``KIND:PROBABILITY`` items (``seed:N`` makes the draws
repeatable):

* ``500``, ``502``, ``503``, ``504``: answer that status instead of handling the request;
* ``429``: answer 429 with ``Retry-After: 1``;
* ``reset``: drop the connection before the request is handled;
* ``drop``: handle the request, then drop the connection before the answer arrives (the ambiguous
  case: the client cannot know whether its request took effect);
* ``delay:DURATION:P`` (e.g. ``delay:2s:0.1``): wait that long, then handle the request;
* ``hold-start:DURATION:P`` (e.g. ``hold-start:20s:1``): only on the batch start route
  (``POST /api/{name}/{version}/batch``): start the execution, then hold the answer that long (a client
  stopped meanwhile never learns the execution id).

Example: ``--faults 503:0.3,reset:0.1,delay:2s:0.1``. ``/login`` routes are never faulted.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

_STATUSES = {"500", "502", "503", "504", "429"}
_START_ROUTE = re.compile(r"^/api/[^/]+/[^/]+/batch/?$")


class FaultSpecError(ValueError):
    """The ``--faults`` value cannot be parsed."""


class _Abort(Exception):
    """Raised after a partial answer so the HTTP server closes the connection."""


@dataclass
class FaultInjector:
    faults: list[tuple[str, float, float]] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def parse(cls, spec: str) -> FaultInjector | None:
        if not spec.strip():
            return None
        injector = cls()
        for item in spec.split(","):
            parts = item.strip().split(":")
            try:
                if parts[0] == "seed" and len(parts) == 2:
                    injector.rng.seed(int(parts[1]))
                    continue
                if parts[0] in ("delay", "hold-start") and len(parts) == 3:
                    seconds = float(parts[1].removesuffix("s"))
                    injector.faults.append((parts[0], float(parts[2]), seconds))
                    continue
                if (parts[0] in _STATUSES or parts[0] in ("reset", "drop")) and len(parts) == 2:
                    injector.faults.append((parts[0], float(parts[1]), 0.0))
                    continue
            except ValueError:
                pass
            raise FaultSpecError(
                f"Cannot read fault {item!r}: use KIND:PROBABILITY with KIND one of 500, 502, 503, 504, 429, "
                "reset, drop; or delay:SECONDSs:PROBABILITY or hold-start:SECONDSs:PROBABILITY; or seed:N."
            )
        for kind, p, _ in injector.faults:
            if not 0 <= p <= 1:
                raise FaultSpecError(f"Probability of fault {kind!r} must be between 0 and 1, not {p}.")
        return injector

    def draw(self, scope: Any) -> tuple[str, float] | None:
        starting = scope["method"] == "POST" and bool(_START_ROUTE.match(scope["path"]))
        for kind, p, arg in self.faults:
            if kind == "hold-start" and not starting:
                continue
            if self.rng.random() < p:
                return kind, arg
        return None

    async def before(self, scope: Any, receive: Any, send: Any) -> bool:
        """Apply a drawn fault; True when the request has been answered (or dropped) here."""
        drawn = self.draw(scope)
        if drawn is None:
            return False
        kind, arg = drawn
        if kind == "delay":
            await asyncio.sleep(arg)
            return False
        if kind == "hold-start":
            scope["mlserver.hold_answer"] = arg
            return False
        if kind == "reset":
            await _abort(send)
        if kind == "drop":
            scope["mlserver.drop_answer"] = True
            return False
        body = json.dumps(
            {"message": f"Injected fault: {kind}", "link": "", "exceptionType": "InjectedFault"}
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if kind == "429":
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": int(kind), "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})
        return True


async def _abort(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise _Abort("injected connection reset")


async def dropping_send(send: Any) -> Any:
    """A ``send`` that swallows the answer and then drops the connection."""

    async def _send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            await _abort(send)

    return _send


def holding_send(send: Any, seconds: float) -> Any:
    """A ``send`` that holds the answer ``seconds`` before it starts sending it."""

    async def _send(message: Any) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(seconds)
        await send(message)

    return _send
