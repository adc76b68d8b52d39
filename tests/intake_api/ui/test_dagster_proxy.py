"""``/dagster``: HTTP and WebSocket forwarded to the Dagster webserver, behind the UI's login.

The upstream here is a real server (uvicorn) standing in for the Dagster webserver under its
``/dagster`` path prefix; ``tests/batch_pipeline/test_cli.py`` reaches the real one through the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import ServerThread, free_port
from tests.intake_api.conftest import serve
from tests.intake_api.ui.helpers import post_form

TOKEN = "proxy-token"
BIG = 3 * 1024 * 1024


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({
        "method": request.method, "path": request.url.path, "query": request.url.query, "body_len": len(body),
        "cookie": request.headers.get("cookie"), "authorization": request.headers.get("authorization"),
    }, headers={"x-upstream": "yes"})  # fmt: skip


async def big(_: Request) -> StreamingResponse:
    async def chunks() -> object:
        for _ in range(BIG // 65536):
            yield b"x" * 65536

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept(
        subprotocol="graphql-ws" if "graphql-ws" in websocket.scope["subprotocols"] else None
    )
    async for message in websocket.iter_text():
        await websocket.send_text(f"echo:{message}")


@pytest.fixture(scope="module")
def dagster() -> Iterator[ServerThread]:
    app = Starlette(routes=[
        Route("/dagster/big", big), Route("/dagster/{path:path}", echo, methods=["GET", "POST"]),
        WebSocketRoute("/dagster/graphql", ws_echo),
    ])  # fmt: skip
    with ServerThread(app) as server:
        yield server


def test_http_is_forwarded_under_the_prefix_without_our_credentials(
    tmp_path: Path, db_url: str, dagster: ServerThread
) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN, dagster_port=dagster.port) as c:
        assert c.get("/dagster/runs").status_code == 401  # not logged in
        post_form(c, "/login", {"token": TOKEN, "next": "/"}, page="/login")
        got = c.get("/dagster/runs?q%5B0%5D=tag%3Ax", headers={"authorization": f"Bearer {TOKEN}"})
        assert got.status_code == 200 and got.headers["x-upstream"] == "yes"
        seen = got.json()
        assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/dagster/runs", "q%5B0%5D=tag%3Ax")
        assert seen["cookie"] is None and seen["authorization"] is None
        posted = c.post("/dagster/graphql", content=b"y" * BIG, headers={"content-type": "application/json"})
        assert posted.json()["body_len"] == BIG
        assert len(c.get("/dagster/big").content) == BIG


def test_a_cross_site_request_is_refused(tmp_path: Path, db_url: str, dagster: ServerThread) -> None:
    with serve(tmp_path, db_url, dagster_port=dagster.port) as c:
        refused = c.post("/dagster/graphql", json={}, headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        same = c.post("/dagster/graphql", json={}, headers={"origin": str(c.base_url).rstrip("/")})
        assert same.status_code == 200


def test_an_unreachable_dagster_is_a_502(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, dagster_port=free_port()) as c:
        down = c.get("/dagster/")
        assert down.status_code == 502 and "not reachable" in down.text


def test_websockets_are_forwarded_behind_the_login(
    tmp_path: Path, db_url: str, dagster: ServerThread
) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN, dagster_port=dagster.port) as c:
        ws_url = str(c.base_url).replace("http://", "ws://").rstrip("/") + "/dagster/graphql"

        async def talk(cookie: str | None) -> tuple[str | None, str]:
            headers = {"cookie": cookie} if cookie else {}
            async with connect(ws_url, subprotocols=["graphql-ws"], additional_headers=headers) as ws:
                await ws.send("hello")
                return ws.subprotocol, await asyncio.wait_for(ws.recv(), 10)

        with pytest.raises(InvalidStatus):  # refused before the upgrade without a login
            asyncio.run(talk(None))
        post_form(c, "/login", {"token": TOKEN, "next": "/"}, page="/login")
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        assert asyncio.run(talk(cookie)) == ("graphql-ws", "echo:hello")
