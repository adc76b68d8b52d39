"""HTTP-level fault injection for every ``/v1`` route: 429 with Retry-After, 500, 503, slow answers and
dropped connections. The control surface under ``/_sim`` is never touched.

Faults come from the ``SIMULATOR_*_RATE`` knobs (one seeded draw per request, so a given request sequence
always meets the same faults) or are forced per request with the ``x-sim-http-fault`` header.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .faults import HTTP_FAULT_HEADER, HttpFault
from .ids import new_request_id
from .store import Store

_ERRORS = {
    HttpFault.RATE_LIMIT: (
        429,
        error_body("Rate limit reached for requests (simulated).", "requests", None, "rate_limit_exceeded"),
    ),
    HttpFault.SERVER_ERROR: (
        500,
        error_body("The server had an error while processing your request (simulated).", "server_error"),
    ),
    HttpFault.UNAVAILABLE: (
        503,
        error_body("The server is overloaded; try again later (simulated).", "server_error"),
    ),
}


class FaultDice:
    """Seeded draws deciding each request's fault."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(f"{self.store.settings.seed}:http")

    def roll(self, forced: str | None) -> tuple[HttpFault | None, bool]:
        """(error-or-drop fault, slow?) for one request; a forced header value overrides the dice."""
        with self._lock:
            draw, slow_draw = self._rng.random(), self._rng.random()
        if forced is not None:
            kinds = {part.strip() for part in forced.split(",")}
            slow = HttpFault.SLOW in kinds
            chosen = next((HttpFault(k) for k in kinds if k in set(HttpFault) and k != HttpFault.SLOW), None)
            return chosen, slow
        f = self.store.faults
        chosen = None
        for kind, rate in (
            (HttpFault.DROP, f.drop_rate),
            (HttpFault.RATE_LIMIT, f.http_429_rate),
            (HttpFault.SERVER_ERROR, f.http_500_rate),
            (HttpFault.UNAVAILABLE, f.http_503_rate),
        ):
            if draw < rate:
                chosen = kind
                break
            draw -= rate
        return chosen, slow_draw < f.slow_rate


class FaultMiddleware:
    def __init__(self, app: ASGIApp, dice: FaultDice) -> None:
        self.app = app
        self.dice = dice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        forced = _header(scope, HTTP_FAULT_HEADER)
        fault, slow = self.dice.roll(forced)
        store = self.dice.store
        with store.lock:
            store.stats.http_requests += 1
            for kind in (fault, HttpFault.SLOW if slow else None):
                if kind is not None:
                    store.stats.http_faults[kind.value] += 1
        request_id = new_request_id().encode()

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        if slow:
            await asyncio.sleep(store.faults.slow_seconds)
        if fault == HttpFault.DROP:
            await _drop(receive, send)
        elif fault is not None:
            status, body = _ERRORS[fault]
            headers = (
                {"retry-after": str(store.faults.retry_after_seconds)}
                if fault == HttpFault.RATE_LIMIT
                else {}
            )
            await _json(send_with_request_id, status, body, headers)
        else:
            await self.app(scope, receive, send_with_request_id)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


async def _json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _drop(receive: Receive, send: Send) -> None:
    """Close the connection without any response bytes.

    ASGI has no "hang up" message, so reach uvicorn's transport through the bound ``receive`` callable.
    Under another server, fall back to announcing a body and never sending it, which the server must
    answer by closing the connection mid-response: the client sees a dropped connection either way.
    """
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None and hasattr(transport, "close"):
        transport.close()
        for _ in range(50):  # let uvicorn notice, so it does not try to answer a closed socket
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0.001)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1024")]})
