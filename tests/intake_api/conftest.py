"""Shared helpers for the intake API tests: a valid request body, envelope checks and DB look-ups.

Test modules import the helpers with ``from tests.intake_api.conftest import ...``; the fixtures
(``api``, ``db_url``, ``settings``...) come from ``tests/conftest.py``.

A fresh database and server per test costs about half a second, so tests that only read their own
rows (unique custom_ids, no global counts) share one server per module: ``shared_api`` /
``shared_client``. Anything that counts rows, changes settings or breaks the database gets its own.
"""

from __future__ import annotations

import copy
import gc
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import ServerThread, make_settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Build failure reports with the garbage collector paused.

    On CPython 3.11.7, pytest parsing a test module to show a failure's source sometimes raises
    ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905,
    pytest-dev/pytest#10874), an INTERNALERROR that ends the whole session. It happened here on the
    first failure of ``test_requests_submit.py``; collecting first and pausing the collector avoids it.
    """
    if call.excinfo is None:
        return (yield)
    gc.collect()
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


# httpx loads the CA bundle for every new client (~0.1 s); the servers here are plain-HTTP loopback,
# so every client shares one context.
TLS_CONTEXT = ssl.create_default_context()


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, verify=TLS_CONTEXT)


WEBHOOK = {"type": "webhook", "webhook_url": "https://hooks.example.com/batch?token=abc"}


def valid_request(custom_id: str = "req-1", **overrides: Any) -> dict[str, Any]:
    """A request ``POST /api/requests`` accepts; top-level keys can be replaced through ``overrides``."""
    body: dict[str, Any] = {
        "custom_id": custom_id,
        "url": "/v1/responses",
        "method": "POST",
        "body": {"model": "gpt-4o-mini", "input": "What is the capital of France?"},
        "delivery_config": copy.deepcopy(WEBHOOK),
    }
    body.update(overrides)
    return body


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def error_items(resp: httpx.Response, status: int) -> list[dict[str, Any]]:
    """Assert ``resp`` is ``status`` with a well-formed error envelope; return its error items."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers["content-type"].startswith("application/json")
    data = resp.json()
    assert set(data) == {"errors"}, data
    errors = data["errors"]
    assert isinstance(errors, list)
    assert errors, "an error envelope needs at least one error"
    for item in errors:
        check_error_item(item)
    return errors


def check_error_item(item: dict[str, Any]) -> None:
    assert set(item) <= {"code", "title", "detail", "source"}, item
    for key in ("code", "title", "detail"):
        assert isinstance(item[key], str), item
        assert item[key], item
    if "source" in item:
        assert set(item["source"]) == {"pointer"}, item
        assert item["source"]["pointer"].startswith("/"), item


def assert_error(
    resp: httpx.Response, status: int, code: str, pointer: str | None = None
) -> list[dict[str, Any]]:
    """Assert an envelope with an item of ``code`` (and at ``pointer`` when given)."""
    errors = error_items(resp, status)
    wanted = [e for e in errors if e["code"] == code]
    assert wanted, f"no error with code {code!r} in {errors}"
    if pointer is not None:
        pointers = [e.get("source", {}).get("pointer") for e in wanted]
        assert pointer in pointers, f"no {code!r} error at {pointer!r}: {errors}"
    return errors


def path_for(custom_id: str) -> str:
    """``/api/requests/<custom_id>`` with every reserved character percent-encoded."""
    return f"/api/requests/{quote(custom_id, safe='')}"


def fetch_row(db_url: str, custom_id: str) -> dict[str, Any] | None:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM batchman.requests WHERE custom_id = %s", (custom_id,)).fetchone()


def count_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM batchman.requests").fetchone()
        assert row is not None
        return row[0]


def execute(db_url: str, sql: str, params: tuple | list = ()) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows


@pytest.fixture
def client(api: Any) -> Iterator[httpx.Client]:
    with http_client(api.url) as c:
        yield c


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@dataclass(frozen=True)
class SharedApi:
    url: str
    db_url: str


@pytest.fixture(scope="module")
def shared_api(
    pg_server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedApi]:
    """One server with default settings on its own database, for every test of a module."""
    from intake_api.main import create_app

    name = f"batchman_m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    db_url = database_url(pg_server_url, name)
    try:
        settings = make_settings(Path(tmp_path_factory.mktemp("shared-api")), database_url=db_url)
        with ServerThread(create_app(settings, database_url=db_url)) as server:
            yield SharedApi(server.url, db_url)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def shared_client(shared_api: SharedApi) -> Iterator[httpx.Client]:
    with http_client(shared_api.url) as c:
        yield c


@contextmanager
def serve(tmp_path: Path, db_url: str, **overrides: Any) -> Iterator[httpx.Client]:
    """A client for a fresh server on ``db_url`` whose settings carry ``overrides``."""
    from intake_api.main import create_app

    settings = make_settings(tmp_path, database_url=db_url, **overrides)
    with (
        ServerThread(create_app(settings, database_url=db_url)) as server,
        http_client(server.url) as client,
    ):
        yield client
