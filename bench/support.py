"""Shared bench plumbing: a Postgres to measure on, fresh databases, and server subprocesses."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from batch_pipeline.store.migrate import migrate
from bench import report_file
from bench.report_file import Direction, Goal


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """BENCH_DATABASE_URL / TEST_DATABASE_URL (an admin URL), else an embedded server in a temp dir."""
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    import tempfile

    from batch_pipeline.runtime.embedded_postgres import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as tmp, EmbeddedPostgres(tmp) as pg:
        yield pg.url("postgres")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextlib.contextmanager
def fresh_database(server_url: str, migrated: bool = True) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_process(
    app: str, env: dict[str, str], factory: bool = False, pids: list[int] | None = None
) -> Iterator[str]:
    """Run ``app`` in its own uvicorn process (so the load generator does not share its GIL); its pid
    is appended to ``pids`` when given."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if factory:
        argv.append("--factory")
    proc = subprocess.Popen(argv, env={**os.environ, **env})
    if pids is not None:
        pids.append(proc.pid)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{app} did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def report(
    name: str,
    value: float,
    unit: str,
    target: str = "",
    *,
    baseline: float | None = None,
    ratio: Direction | None = None,
    goal: Goal | None = None,
    ratio_goal: Goal | None = None,
) -> None:
    """Print a figure and record it for docs/benchmarks.md (``bench.report_file``). ``baseline``: the
    baseline measured in the same run (the ratio is oriented by the unit unless ``ratio`` says which
    way to divide); ``goal`` is on the value, ``ratio_goal`` on the ratio, e.g. ``(">=", 0.7)``;
    ``target`` is free text, shown when there is no structured goal."""
    caller = str(sys._getframe(1).f_globals.get("__name__", ""))
    figure = report_file.record(
        caller.removeprefix("bench."),
        name,
        value,
        unit,
        target,
        baseline=baseline,
        ratio_direction=ratio,
        goal=goal,
        ratio_goal=ratio_goal,
    )
    print(report_file.console_line(figure), flush=True)
