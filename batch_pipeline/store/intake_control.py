"""The intake pause flag: one row in ``batchman.intake_control`` (migration 0006)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

GET_PAUSED = "SELECT paused, changed_at FROM batchman.intake_control"
SET_PAUSED = """
UPDATE batchman.intake_control SET paused = %s, changed_at = now()
WHERE paused IS DISTINCT FROM %s
"""


async def get_state(conn: psycopg.AsyncConnection) -> tuple[bool, datetime | None]:
    """(paused, when it last changed)."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(GET_PAUSED)
    return _unpack(await cur.fetchone())


def get_state_sync(conn: psycopg.Connection) -> tuple[bool, datetime | None]:
    cur = conn.cursor(row_factory=tuple_row)
    return _unpack(cur.execute(GET_PAUSED).fetchone())


async def set_paused(conn: psycopg.AsyncConnection, paused: bool) -> None:
    """Set the flag and commit; setting it to what it already is keeps its ``changed_at``."""
    await conn.execute(SET_PAUSED, (paused, paused))
    await conn.commit()


def _unpack(row: tuple[Any, ...] | None) -> tuple[bool, datetime | None]:
    if row is None:  # the migration inserts the row; without it, intake is not paused
        return False, None
    return bool(row[0]), row[1]
