"""HTTP-level fault injection for every ``/v1`` route: 429 with Retry-After, 500, 503, slow answers,
connections dropped before the route runs (``drop``: nothing happened) and answers lost after it ran
(``drop_after``: the file or batch exists, the client never heard). The control surface under ``/_sim``
is never touched.

Faults come from the ``SIMULATOR_*_RATE`` knobs (one seeded draw per request, so a given request sequence
always meets the same faults), from the ``drop_response_next`` and ``fail_next`` countdowns per operation
(set at runtime with ``PUT /_sim/faults``), or are forced per request with the ``x-sim-http-fault`` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .faults import HTTP_FAULT_HEADER, HttpFault
from .ids import new_request_id
from .store import Store

logger = logging.getLogger(__name__)

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

    def roll(self, forced: str | None, operation: str | None = None) -> tuple[HttpFault | None, float]:
        """(error-or-drop fault, seconds the answer is held back) for one request.

        A forced header value overrides everything; else a pending ``drop_response_next`` count for the
        request's operation is used up, else a pending ``fail_next`` one; else the dice decide. The dice
        are drawn every time, so the faults later requests meet do not depend on which of these applied.
        """
        with self._lock:
            draw, slow_draw = self._rng.random(), self._rng.random()
        store = self.store
        if forced is not None:
            kinds = {part.strip() for part in forced.split(",")}
            delay = store.faults.slow_seconds if HttpFault.SLOW in kinds else 0.0
            chosen = next((HttpFault(k) for k in kinds if k in set(HttpFault) and k != HttpFault.SLOW), None)
            return chosen, delay
        with store.lock:
            f = store.faults
            delay = f.slow_seconds if slow_draw < f.slow_rate else 0.0
            if operation is not None and f.drop_response_next.get(operation, 0) > 0:
                f.drop_response_next[operation] -= 1
                return HttpFault.DROP_AFTER, delay
            pending = f.fail_next.get(operation) if operation is not None else None
            if pending is not None and pending.count > 0:
                pending.count -= 1
                if pending.fault == HttpFault.SLOW:
                    return None, f.slow_seconds if pending.seconds is None else pending.seconds
                return HttpFault(pending.fault), delay
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
        return chosen, delay


class FaultMiddleware:
    def __init__(self, app: ASGIApp, dice: FaultDice) -> None:
        self.app = app
        self.dice = dice

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        forced = _header(scope, HTTP_FAULT_HEADER)
        fault, delay = self.dice.roll(forced, operation(scope["method"], scope["path"]))
        store = self.dice.store
        with store.lock:
            store.stats.http_requests += 1
            for kind in (fault, HttpFault.SLOW if delay > 0 else None):
                if kind is not None:
                    store.stats.http_faults[kind.value] += 1
        request_id = new_request_id().encode()

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        if fault == HttpFault.DROP_AFTER:
            await _run_unheard(self.app, scope, receive)
            await _pause(receive, delay)
            await _drop(receive, send)
            return
        if fault is None:
            # A slow answer: the route runs now and its answer is held back, so a client that gives up
            # waiting may find the work done, as with a real slow server.
            await self.app(scope, receive, _delayed(send_with_request_id, receive, delay))
            return
        await _pause(receive, delay)
        if fault == HttpFault.DROP:
            await _drop(receive, send)
        else:
            status, body = _ERRORS[fault]
            headers = (
                {"retry-after": str(store.faults.retry_after_seconds)}
                if fault == HttpFault.RATE_LIMIT
                else {}
            )
            await _json(send_with_request_id, status, body, headers)


# (method, path pattern) of the calls ``drop_response_next`` and ``fail_next`` count, by the SDK's name
# for them.
_OPERATIONS = (
    ("POST", re.compile(r"/v1/files/?"), "files.create"),
    ("GET", re.compile(r"/v1/files/?"), "files.list"),
    ("GET", re.compile(r"/v1/files/[^/]+/content/?"), "files.content"),
    ("GET", re.compile(r"/v1/files/[^/]+/?"), "files.retrieve"),
    ("DELETE", re.compile(r"/v1/files/[^/]+/?"), "files.delete"),
    ("POST", re.compile(r"/v1/batches/?"), "batches.create"),
    ("GET", re.compile(r"/v1/batches/?"), "batches.list"),
    ("POST", re.compile(r"/v1/batches/[^/]+/cancel/?"), "batches.cancel"),
    ("GET", re.compile(r"/v1/batches/[^/]+/?"), "batches.retrieve"),
)


def operation(method: str, path: str) -> str | None:
    """The operation name of a request (``files.create``, ``batches.retrieve``, ...; see _OPERATIONS)."""
    for wanted, pattern, name in _OPERATIONS:
        if method == wanted and pattern.fullmatch(path):
            return name
    return None


async def _run_unheard(app: ASGIApp, scope: Scope, receive: Receive) -> None:
    """Run the route to completion, throwing its answer away (the caller then hangs up)."""

    async def discard(message: Message) -> None:
        return None

    try:
        await app(scope, receive, discard)
    except Exception:  # the client hears nothing either way
        logger.exception("route failed under a drop_after fault")


def _delayed(send: Send, receive: Receive, seconds: float) -> Send:
    """``send`` that holds the response back ``seconds`` (or until the client hangs up) before its start."""
    if seconds <= 0:
        return send

    async def send_later(message: Message) -> None:
        if message["type"] == "http.response.start":
            await _pause(receive, seconds)
        await send(message)

    return send_later


async def _pause(receive: Receive, seconds: float) -> None:
    """Sleep ``seconds``, ending early when the client hangs up (nobody is waiting any more)."""
    if seconds <= 0:
        return
    cycle = getattr(receive, "__self__", None)
    if not hasattr(cycle, "disconnected"):  # not uvicorn: no way to notice, just wait
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not cycle.disconnected:  # type: ignore[union-attr]
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(0.01, remaining))


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
