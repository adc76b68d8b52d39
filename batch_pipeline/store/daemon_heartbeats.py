"""The Dagster daemon's heartbeats, read for ``/health/ready``.

The daemon writes one row per daemon type (SENSOR, SCHEDULER, QUEUED_RUN_COORDINATOR, ...) into the
``daemon_heartbeats`` table of Dagster's run storage about every 30 s, and replaces it each time. That
storage is DAGSTER_DATABASE_URL, or our own database's public schema. The body is Dagster's serialized
``DaemonHeartbeat``, whose ``timestamp`` is seconds since the epoch: read from there, it needs no time
zone reasoning (the ``timestamp`` column is a zone-less TIMESTAMP).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import tuple_row

HEARTBEATS_TABLE = "SELECT to_regclass('public.daemon_heartbeats') IS NOT NULL AS present"
HEARTBEATS = "SELECT daemon_type, body FROM public.daemon_heartbeats"


async def table_present(conn: psycopg.AsyncConnection) -> bool:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(HEARTBEATS_TABLE)
    row = await cur.fetchone()
    return bool(row and row[0])


async def heartbeat_bodies(conn: psycopg.AsyncConnection) -> dict[str, str]:
    """``daemon_type`` → the serialized heartbeat (JSON text)."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(HEARTBEATS)
    return {daemon_type: body for daemon_type, body in await cur.fetchall()}
