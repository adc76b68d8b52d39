"""Operator overrides of per-model enqueued-token limits (table ``batchman.model_limits``).

The pipeline and intake read them as a ``{model_prefix: token_limit}`` table; the settings API lists,
sets and removes them (async, on the API's pool, in the caller's transaction).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

# The lookup table for ``model_limits.token_limit_for``: prefix and limit only.
LIST_OVERRIDES = "SELECT model_prefix, token_limit FROM batchman.model_limits ORDER BY model_prefix"
# What the settings API shows of each override (when it was last set, too).
LIST_OVERRIDE_ROWS = (
    "SELECT model_prefix, token_limit, updated_at FROM batchman.model_limits ORDER BY model_prefix"
)
UPSERT_OVERRIDE = """
INSERT INTO batchman.model_limits (model_prefix, token_limit) VALUES (%s, %s)
ON CONFLICT (model_prefix) DO UPDATE SET token_limit = EXCLUDED.token_limit, updated_at = now()
RETURNING model_prefix, token_limit, updated_at
"""
DELETE_OVERRIDE = "DELETE FROM batchman.model_limits WHERE model_prefix = %s"


async def fetch_overrides(conn: psycopg.AsyncConnection) -> dict[str, int]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(LIST_OVERRIDES)
        return dict(await cur.fetchall())


def fetch_overrides_sync(conn: psycopg.Connection) -> dict[str, int]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return dict(cur.execute(LIST_OVERRIDES).fetchall())


async def list_override_rows(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    """Every override as ``{model_prefix, token_limit, updated_at}``, by prefix."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(LIST_OVERRIDE_ROWS)
    return await cur.fetchall()


async def upsert_override(
    conn: psycopg.AsyncConnection, model_prefix: str, token_limit: int
) -> dict[str, Any]:
    """Set (or replace) the override for ``model_prefix``; the stored row."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(UPSERT_OVERRIDE, (model_prefix, token_limit))
    row = await cur.fetchone()
    assert row is not None  # an upsert always returns its row
    return row


async def delete_override(conn: psycopg.AsyncConnection, model_prefix: str) -> bool:
    """False when there was no override for ``model_prefix``."""
    cur = await conn.execute(DELETE_OVERRIDE, (model_prefix,))
    return cur.rowcount > 0
