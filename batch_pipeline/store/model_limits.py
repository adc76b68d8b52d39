"""Operator overrides of per-model enqueued-token limits (table ``batchman.model_limits``)."""

from __future__ import annotations

import psycopg
from psycopg.rows import tuple_row

LIST_OVERRIDES = "SELECT model_prefix, token_limit FROM batchman.model_limits ORDER BY model_prefix"
UPSERT_OVERRIDE = """
INSERT INTO batchman.model_limits (model_prefix, token_limit) VALUES (%s, %s)
ON CONFLICT (model_prefix) DO UPDATE SET token_limit = EXCLUDED.token_limit, updated_at = now()
"""
DELETE_OVERRIDE = "DELETE FROM batchman.model_limits WHERE model_prefix = %s"


async def fetch_overrides(conn: psycopg.AsyncConnection) -> dict[str, int]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(LIST_OVERRIDES)
        return dict(await cur.fetchall())


def fetch_overrides_sync(conn: psycopg.Connection) -> dict[str, int]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return dict(cur.execute(LIST_OVERRIDES).fetchall())
