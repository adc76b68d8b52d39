"""One log line per HTTP request, its request id, and the intake counters.

A pure ASGI layer (not Starlette's BaseHTTPMiddleware, which costs a task and a stream per request on
the single-POST hot path). The request id is the caller's ``x-request-id`` when it is a sane token,
else a new one; it is echoed in the response and carried by every line logged while the request runs
(``observability.logs``). The path is logged without its query string, which may hold credentials.

The intake counters read what the routes answer: a single POST is accepted on 202 and otherwise
refused for the error code of its envelope; a bulk POST's answer starts with its
``{"accepted":N,"duplicate":N,"invalid":N`` counts (``routes/requests.py`` writes them first).
"""

from __future__ import annotations

import logging
import re
import secrets
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch_pipeline.observability.logs import reset_context, set_context
from batch_pipeline.observability.metrics import count_intake

log = logging.getLogger("batchman.access")

HEADER = b"x-request-id"
# What we take from a caller as a request id: it is logged and sent back, so no spaces or controls.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_ROUTES_THAT_TAKE_REQUESTS = {"/api/requests": "single", "/api/requests/bulk": "bulk"}
_BULK_COUNTS = re.compile(rb'^\{"accepted":(\d+),"duplicate":(\d+),"invalid":(\d+)')
# Enough of a refusal's body to find its first error code (envelopes are small).
ERROR_PREFIX_BYTES = 4096


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = set_context(request_id=request_id.decode())
        route = (
            _ROUTES_THAT_TAKE_REQUESTS.get(scope["path"].rstrip("/")) if scope["method"] == "POST" else None
        )
        started = time.perf_counter()
        state: dict = {"status": 500, "body": b""}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, request_id)]
            elif (
                route and message["type"] == "http.response.body" and len(state["body"]) < ERROR_PREFIX_BYTES
            ):
                state["body"] += message.get("body", b"")[:ERROR_PREFIX_BYTES]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if route:
                _count(route, state["status"], state["body"])
            status = state["status"]
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "%s %s %s %.2f ms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )
            reset_context(token)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == HEADER and _SANE_ID.fullmatch(value):
            return value
    return secrets.token_hex(16).encode()


def _count(route: str, status: int, body: bytes) -> None:
    if route == "bulk" and status == 200 and (m := _BULK_COUNTS.match(body)):
        accepted, duplicate, invalid = (int(g) for g in m.groups())
        count_intake(route, "accepted", "", accepted)
        count_intake(route, "rejected", "duplicate_custom_id", duplicate)
        count_intake(route, "rejected", "invalid", invalid)
    elif 200 <= status < 300:
        count_intake(route, "accepted", "")
    else:
        count_intake(route, "rejected", _error_code(status, body))


def _error_code(status: int, body: bytes) -> str:
    """The first error code of the envelope (validation_error, duplicate_custom_id, ...), else the status."""
    try:
        return str(orjson.loads(body)["errors"][0]["code"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"http_{status}"
