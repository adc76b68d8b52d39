"""The token and the size cap are checked before any body is read (``intake_api/guard.py``).

Raw sockets announce a large body and send none of it: an answer that comes anyway proves the server
decided without reading it (a server that waited for the body would time out here)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from intake_api.guard import SMALL_BODY_BYTES
from intake_api.main import create_app
from tests.conftest import ServerThread, make_settings

TOKEN = "guard-test-token"
BULK_CAP = 64 * 1024


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[ServerThread]:
    settings = make_settings(tmp_path, database_url=db_url, api_token=TOKEN, bulk_max_body_bytes=BULK_CAP)
    with ServerThread(create_app(settings, database_url=db_url)) as server:
        yield server


def announce(server: ServerThread, path: str, length: int, token: str | None = None) -> bytes:
    """Send only the headers of a POST announcing ``length`` body bytes; the response, if any."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        return sock.recv(65536)


@pytest.mark.parametrize(
    "path",
    ["/api/batches/upload", "/api/settings/model-limits/gpt-4o", "/api/requests", "/api/requests/bulk"],
)
def test_no_token_is_a_401_before_the_body(server: ServerThread, path: str) -> None:
    answer = announce(server, path, 64 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code":"unauthorized"' in answer


@pytest.mark.parametrize(
    ("path", "cap"),
    [("/api/batches/upload", SMALL_BODY_BYTES), ("/api/requests/bulk", BULK_CAP)],
)
def test_a_body_announced_over_the_cap_is_a_413_before_the_body(
    server: ServerThread, path: str, cap: int
) -> None:
    answer = announce(server, path, cap + 1, token=TOKEN)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer


def test_a_chunked_body_over_the_cap_is_cut_off_with_a_413(server: ServerThread) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"endpoint": "' + b"x" * SMALL_BODY_BYTES + b'"}'

    resp = httpx.post(
        f"{server.url}/api/batches/upload",
        content=chunks(),
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["errors"][0]["code"] == "payload_too_large"


def test_with_the_token_small_bodies_pass_and_the_docs_stay_public(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/api/openapi").status_code == 200
        assert client.get("/api/batches").status_code == 401
        ok = client.get("/api/batches", headers={"x-api-token": TOKEN})
        assert ok.status_code == 200, ok.text
