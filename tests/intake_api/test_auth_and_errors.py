"""The optional API token, and FastAPI's own errors (unknown route, wrong method) in the error envelope."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.intake_api.conftest import assert_error, count_rows, execute, serve, valid_request

TOKEN = "s3cret"

BAD_CREDENTIALS = {
    "none": {},
    "wrong-bearer": {"Authorization": "Bearer wrong"},
    "prefix-of-token": {"Authorization": "Bearer s3cre"},
    "token-plus-suffix": {"Authorization": "Bearer s3cret2"},
    "empty-bearer": {"Authorization": "Bearer"},
    "basic-scheme": {"Authorization": f"Basic {TOKEN}"},
    "bare-token": {"Authorization": TOKEN},
    "wrong-x-api-token": {"x-api-token": "nope"},
    "empty-x-api-token": {"x-api-token": ""},
}
GOOD_CREDENTIALS = {
    "bearer": {"Authorization": f"Bearer {TOKEN}"},
    "bearer-lowercase-scheme": {"Authorization": f"bearer {TOKEN}"},
    "x-api-token": {"x-api-token": TOKEN},
}


def _assert_unauthorized(resp: httpx.Response) -> None:
    errors = assert_error(resp, 401, "unauthorized")
    assert errors[0]["title"] == "Unauthorized"


def test_api_token_guards_every_request_route(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        for name, headers in BAD_CREDENTIALS.items():
            resp = c.post("/api/requests", json=valid_request(f"auth-{name}"), headers=headers)
            assert resp.status_code == 401, f"{name}: {resp.status_code} {resp.text}"
            _assert_unauthorized(resp)
            _assert_unauthorized(c.get("/api/requests", headers=headers))
            _assert_unauthorized(c.get("/api/requests/anything", headers=headers))
            _assert_unauthorized(c.post("/api/requests/anything/redeliver", headers=headers))
            _assert_unauthorized(
                c.post("/api/requests/bulk", json=[valid_request("auth-bulk")], headers=headers)
            )
            # The token is checked before the body is even looked at.
            _assert_unauthorized(c.post("/api/requests", content=b"{not json", headers=headers))
        assert count_rows(db_url) == 0

        for name, headers in GOOD_CREDENTIALS.items():
            resp = c.post("/api/requests", json=valid_request(f"auth-ok-{name}"), headers=headers)
            assert resp.status_code == 202, f"{name}: {resp.status_code} {resp.text}"
            assert resp.json() == {"custom_id": f"auth-ok-{name}"}
            got = c.get(f"/api/requests/auth-ok-{name}", headers=headers)
            assert got.status_code == 200
            listed = c.get("/api/requests", headers=headers)
            assert listed.status_code == 200
        assert count_rows(db_url) == len(GOOD_CREDENTIALS)

        headers = GOOD_CREDENTIALS["bearer"]
        bulk = c.post("/api/requests/bulk", json=[valid_request("auth-bulk-ok")], headers=headers)
        assert bulk.status_code == 200
        assert bulk.json()["accepted"] == 1
        assert_error(c.get("/api/requests/missing", headers=headers), 404, "not_found")
        execute(
            db_url,
            "UPDATE batchman.requests SET result = '{\"id\": \"r\"}', state = 'delivered' "
            "WHERE custom_id = 'auth-bulk-ok'",
        )
        redelivered = c.post("/api/requests/auth-bulk-ok/redeliver", headers=headers)
        assert redelivered.status_code == 202, redelivered.text

        # Liveness and readiness stay open.
        assert c.get("/health").status_code == 200
        assert c.get("/health/ready").status_code == 200


def test_without_a_configured_token_no_credentials_are_needed(shared_client: httpx.Client) -> None:
    resp = shared_client.post("/api/requests", json=valid_request("no-token-needed"))
    assert resp.status_code == 202, resp.text
    # A stray token is ignored, not rejected.
    resp = shared_client.get("/api/requests/no-token-needed", headers={"Authorization": "Bearer whatever"})
    assert resp.status_code == 200


@pytest.mark.parametrize("path", ["/nope", "/api", "/api/nope", "/health/nope", "/api/requestsx"])
def test_unknown_route_answers_404_envelope(shared_client: httpx.Client, path: str) -> None:
    resp = shared_client.get(path)
    errors = assert_error(resp, 404, "not_found")
    assert errors[0]["title"] == "Not Found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/requests"),
        ("PUT", "/api/requests"),
        ("PATCH", "/api/requests/some-id"),
        ("DELETE", "/api/requests/some-id"),
        ("POST", "/health"),
        ("DELETE", "/health/ready"),
        ("PUT", "/api/requests/bulk"),
    ],
)
def test_wrong_method_answers_405_envelope(shared_client: httpx.Client, method: str, path: str) -> None:
    resp = shared_client.request(method, path)
    errors = assert_error(resp, 405, "method_not_allowed")
    assert errors[0]["title"] == "Method Not Allowed"
    assert resp.headers.get("allow"), "a 405 names the allowed methods"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_leaves_mid_body_is_no_server_error(api: Any, db_url: str) -> None:
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("intake_api.errors", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
    try:
        port = int(api.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/requests HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
                b'content-length: 1000\r\n\r\n{"custom_id": "left-early",'
            )
        deadline = time.monotonic() + 15
        while not any("client disconnected" in r.getMessage() for r in records.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in records.records]
            time.sleep(0.05)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
    assert [r.getMessage() for r in records.records if r.levelno >= logging.ERROR] == []
    assert count_rows(db_url) == 0
