"""Batch state transitions: conditional updates plus an audit row, in the caller's transaction.

Every transition is ``UPDATE … WHERE id = … AND state = ANY(<from>) RETURNING``: zero rows means the
batch moved on (another run did the work), which is what makes every op safe to retry or re-run. The
pipeline's stages use ``transition`` (sync), the API's operator actions ``transition_async``: one
statement, built once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_pipeline.states import ALLOWED_BATCH_MOVES

RECORD_TRANSITION = """
INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason) VALUES (%s, %s, %s, %s)
"""


@dataclass(frozen=True)
class FromNow:
    """A column value ``now() + this long`` on the database's clock (the only clock), as a parameter."""

    seconds: float = 0
    minutes: float = 0

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.seconds, minutes=self.minutes)


class IllegalTransition(ValueError):
    """A move ``states.ALLOWED_BATCH_MOVES`` does not allow: a programming error, never a runtime race."""


def _statement(
    batch_id: int, from_states: Iterable[str], to_state: str, columns: dict[str, Any]
) -> tuple[sql.Composed, dict[str, Any]]:
    """The conditional UPDATE for one transition. Column values may be fixed ``sql.SQL`` fragments
    (e.g. ``sql.SQL("now()")``) or ``FromNow``; every other value is a parameter."""
    from_states = list(from_states)
    illegal = [f for f in from_states if f != to_state and (f, to_state) not in ALLOWED_BATCH_MOVES]
    if illegal:
        raise IllegalTransition(f"batch {batch_id}: {illegal} -> {to_state} is not a batch transition")
    sets = [sql.SQL("state = %(to_state)s"), sql.SQL("updated_at = now()")]
    params: dict[str, Any] = {"id": batch_id, "from": from_states, "to_state": to_state}
    for name, value in columns.items():
        if isinstance(value, sql.Composable):
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), value))
        elif isinstance(value, FromNow):
            sets.append(sql.SQL("{} = now() + {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = value.delta
        else:
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = value
    query = sql.SQL(
        "UPDATE batchman.batches b SET {sets} FROM (SELECT id, state AS previous_state FROM batchman.batches"
        " WHERE id = %(id)s AND state = ANY(%(from)s) FOR UPDATE) old"
        " WHERE b.id = old.id RETURNING b.*, old.previous_state"
    ).format(sets=sql.SQL(", ").join(sets))
    return query, params


def transition(
    conn: psycopg.Connection,
    batch_id: int,
    from_states: Iterable[str],
    to_state: str,
    reason: str,
    **columns: Any,
) -> dict[str, Any] | None:
    """Move a batch to ``to_state`` if it is in one of ``from_states``; also set ``columns``.

    Returns the updated row (with ``previous_state``) or None when the batch was not in those states.
    """
    query, params = _statement(batch_id, from_states, to_state, columns)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
        if row is not None and row["previous_state"] != to_state:
            cur.execute(RECORD_TRANSITION, (batch_id, row["previous_state"], to_state, reason))
    return row


async def transition_async(
    conn: psycopg.AsyncConnection,
    batch_id: int,
    from_states: Iterable[str],
    to_state: str,
    reason: str,
    **columns: Any,
) -> dict[str, Any] | None:
    """``transition`` on an async connection (the API's pool)."""
    query, params = _statement(batch_id, from_states, to_state, columns)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    row = await cur.fetchone()
    if row is not None and row["previous_state"] != to_state:
        await cur.execute(RECORD_TRANSITION, (batch_id, row["previous_state"], to_state, reason))
    return row
