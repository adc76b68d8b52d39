"""``/dagster``: the Dagster UI behind the operator's login, on the API's port.

``batchman up`` runs the Dagster webserver on loopback with ``--path-prefix /dagster``; this module
forwards HTTP (streamed both ways, never buffered whole) and WebSockets (Dagster's live GraphQL
subscriptions) to it. The guard has already checked the session. A request whose ``Origin`` is another
site is refused, WebSockets included: Dagster can launch runs, and without API_TOKEN nothing else would
stop a page on another site from posting to it through here.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from batch_pipeline.config import Settings

PREFIX = "/dagster"
# Not forwarded: per-connection headers, our session cookie and API token (Dagster needs neither).
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "cookie", "authorization", "x-api-token",
}  # fmt: skip
WS_DROPPED = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
              "sec-websocket-protocol", "origin", *HOP_BY_HOP}  # fmt: skip
CONNECT_TIMEOUT = 5.0
# Dagster's GraphQL answers for big run logs can take a while; streaming keeps memory flat meanwhile.
READ_TIMEOUT = 120.0


def upstream(settings: Settings) -> str:
    """host:port of the Dagster webserver (a wildcard bind is reached over loopback)."""
    host = settings.dagster_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{settings.dagster_port}" if ":" in host else f"{host}:{settings.dagster_port}"


def same_origin(origin: str | None, host: str | None) -> bool:
    """No Origin (not a browser's cross-site request) or one naming this very host."""
    return origin is None or (host is not None and urlsplit(origin).netloc == host)


def _client(app: FastAPI) -> httpx.AsyncClient:
    client = getattr(app.state, "dagster_client", None)
    if client is None:
        timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        client = app.state.dagster_client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
    return client


def install(app: FastAPI, settings: Settings) -> None:
    target = upstream(settings)

    @app.api_route(
        PREFIX + "{path:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def proxy_http(request: Request, path: str) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            return Response("Cross-site request refused", status_code=403)
        url = f"http://{target}{PREFIX}{path}"
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        client = _client(app)
        body = request.stream() if request.method not in ("GET", "HEAD") else None
        try:
            upstream_req = client.build_request(request.method, url, headers=headers, content=body)
            resp = await client.send(upstream_req, stream=True)
        except httpx.TransportError as exc:
            return Response(
                f"The Dagster UI is not reachable at {target} ({type(exc).__name__}): is it running?",
                status_code=502,
            )
        out_headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        response = StreamingResponse(
            resp.aiter_raw(), status_code=resp.status_code, background=BackgroundTask(resp.aclose)
        )
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out_headers]
        return response

    @app.websocket(PREFIX + "{path:path}")
    async def proxy_ws(websocket: WebSocket, path: str) -> None:
        if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            await websocket.close(code=1008)
            return
        url = f"ws://{target}{PREFIX}{path}"
        if websocket.url.query:
            url += "?" + websocket.url.query
        protocols = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()
        ]
        headers = [(k, v) for k, v in websocket.headers.items() if k.lower() not in WS_DROPPED]
        try:
            remote = await connect(url, subprotocols=protocols or None, additional_headers=headers,
                                   open_timeout=CONNECT_TIMEOUT, max_size=None)  # fmt: skip
        except Exception:  # refused, unreachable or timed out: close ours too
            await websocket.close(code=1011)
            return
        await websocket.accept(subprotocol=remote.subprotocol)
        async with remote:
            await _pump(websocket, remote)


async def _pump(websocket: WebSocket, remote) -> None:
    """Copy messages both ways until either side closes; then close the other."""

    async def to_remote() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await remote.send(message["text"] if message.get("text") is not None else message["bytes"])

    async def to_client() -> None:
        async for data in remote:
            if isinstance(data, str):
                await websocket.send_text(data)
            else:
                await websocket.send_bytes(data)

    tasks = [asyncio.create_task(to_remote()), asyncio.create_task(to_client())]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in tasks:
        # The browser leaving the page (WebSocketDisconnect while sending to it) is the normal end.
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError):
            await task
    with contextlib.suppress(RuntimeError):
        await websocket.close()
