"""Intake pause: while paused, HTTP intake answers 503 ``maintenance_mode`` and the RabbitMQ consumer
stops taking messages (they stay in the queue).

The flag lives in Postgres so every API process and the consumer see it. The single-request route
must stay cheap, so each process caches it for ``CACHE_SECONDS``: a pause or resume made through one
API process applies there at once, and in other processes within about a second (the consumer polls
at the same pace).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from batch_pipeline.store import intake_control as store

CACHE_SECONDS = 1.0


# This process's last reading per database, (paused, monotonic time read). Keyed by database, not
# global: one process may serve several (the tests start an app per fresh database).
_cache: dict[tuple[str, int, str], tuple[bool, float]] = {}


def _key(conn: psycopg.Connection | psycopg.AsyncConnection) -> tuple[str, int, str]:
    info = conn.info
    return info.host, info.port, info.dbname


def _remember(conn: psycopg.Connection | psycopg.AsyncConnection, paused: bool) -> None:
    _cache[_key(conn)] = (paused, time.monotonic())


async def is_paused(conn: psycopg.AsyncConnection) -> bool:
    """Whether intake is paused, read from the database at most once per ``CACHE_SECONDS``."""
    cached = _cache.get(_key(conn))
    if cached is not None and time.monotonic() - cached[1] < CACHE_SECONDS:
        return cached[0]
    paused, _ = await store.get_state(conn)
    _remember(conn, paused)
    return paused


def is_paused_sync(conn: psycopg.Connection) -> bool:
    """The flag as stored now (uncached), for synchronous callers."""
    return store.get_state_sync(conn)[0]


async def status(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    """``{"paused": bool, "changed_at": datetime | None}``, read now (uncached)."""
    paused, changed_at = await store.get_state(conn)
    _remember(conn, paused)
    return {"paused": paused, "changed_at": changed_at}


async def pause(conn: psycopg.AsyncConnection) -> None:
    await _set(conn, True)


async def resume(conn: psycopg.AsyncConnection) -> None:
    await _set(conn, False)


async def _set(conn: psycopg.AsyncConnection, paused: bool) -> None:
    await store.set_paused(conn, paused)
    _remember(conn, paused)  # this process applies it at once; the others within CACHE_SECONDS


def forget_cached() -> None:
    """Drop this process's cached readings (for tests that change the flag behind the API's back)."""
    _cache.clear()
