"""Shared fixtures: a real Postgres (TEST_DATABASE_URL, else an embedded one), one fresh database per
test cloned from a migrated template, a real uvicorn server for the API, and RabbitMQ.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
import uvicorn

from batch_pipeline.config import Settings, load_settings
from batch_pipeline.store.migrate import migrate
from tests.databases import DatabasePool

IN_CI = os.environ.get("CI", "").lower() == "true"


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL for a real Postgres server the tests may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from batch_pipeline.runtime.embedded_postgres import EmbeddedPostgres

    with EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg")) as pg:
        yield pg.url("postgres")


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    name = f"batchman_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(_with_database(pg_server_url, name))
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_pool(pg_server_url: str, template_db: str) -> Iterator[DatabasePool]:
    pool = DatabasePool(pg_server_url, template_db)
    yield pool
    pool.close()


@pytest.fixture
def db_url(database_pool: DatabasePool) -> Iterator[str]:
    """A migrated database of its own for one test: used before, emptied since (tests/databases.py)."""
    url = database_pool.take()
    yield url
    database_pool.give_back(url)


@pytest.fixture
def fresh_db_url(database_pool: DatabasePool) -> Iterator[str]:
    """A migrated database never used before, for a test that reads query plans (the planner's
    statistics of earlier rows outlive a TRUNCATE)."""
    name = database_pool.create()
    yield _with_database(database_pool.admin_url, name)
    database_pool.drop(name)


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A database with nothing in it, for migration tests."""
    name = f"batchman_e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for servers a test starts in another process (which binds them later) come from below the
# kernel's ephemeral range: the kernel never hands those to another socket meanwhile, so the port is
# still free when the child binds it. Each is handed out once per session. (Servers in this process
# bind first and publish the port after: ``ServerThread``.)
def _worker_port_range(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's own slice of [low, high): two workers never hand out the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    width = (high - low) // max(count, 1)
    start = low + int(worker or 0) * width
    return start, start + width


_PORT_RANGE = _worker_port_range(20000, min(32000, _ephemeral_low()))
_handed_out: set[int] = set()
_ports = random.Random(os.getpid())


def free_port() -> int:
    for _ in range(1000):
        port = _ports.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


class ServerThread:
    """A real uvicorn server for an ASGI app, on a loopback port, in a background thread.

    The socket is bound here, before anyone learns the port, and handed to uvicorn: no other process
    can take the port between choosing and binding it. Keep-alive as ``batchman api`` sets it.
    """

    def __init__(
        self, app: object, keepalive_seconds: int = Settings.model_fields["api_keepalive_seconds"].default
    ) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=keepalive_seconds)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings isolated from the developer's environment and .env file."""
    values: dict[str, object] = {"data_dir": tmp_path, "openai_api_key": None}
    values.update(overrides)
    return load_settings(_env_file=None, **values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, database_url=db_url)


@pytest.fixture
def api(settings: Settings, db_url: str) -> Iterator[ServerThread]:
    from intake_api.main import create_app

    with ServerThread(create_app(settings, database_url=db_url)) as server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """A reachable RabbitMQ; skipped locally when there is none, a failure when CI=true."""
    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"RabbitMQ at {url} is not reachable in CI: {exc}")
        pytest.skip(f"RabbitMQ not reachable: {exc}")
    return url


@pytest.fixture
def settings_factory(tmp_path: Path):
    """``make_settings`` as a fixture, for test packages that cannot import this module."""

    def factory(**overrides: object) -> Settings:
        return make_settings(tmp_path, **overrides)

    return factory


@pytest.fixture
def server_thread():
    """``ServerThread`` as a fixture, for test packages that cannot import this module."""
    return ServerThread


class WebhookReceiver:
    """A real webhook receiver on a bound loopback port, recording (lower-cased headers, JSON body) of
    every POST it answers with 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict]] = []
        received, lock = self.received, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
