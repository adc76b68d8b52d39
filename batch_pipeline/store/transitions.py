"""Batch state transitions: conditional updates plus an audit row, in the caller's transaction.

Every transition is ``UPDATE … WHERE id = … AND state = ANY(<from>) RETURNING``: zero rows means the
batch moved on (another run did the work), which is what makes every op safe to retry or re-run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

# Batch states in which OpenAI may still be working (their tokens count against the model's limit).
AT_OPENAI = ("openai_processing", "cancelling")
# Batch states nobody acts on any more.
FINISHED = ("delivered", "partially_delivered", "delivery_failed", "failed", "cancelled", "resubmitted")

RECORD_TRANSITION = """
INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason) VALUES (%s, %s, %s, %s)
"""


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
    Column values may be ``sql.SQL`` fragments (e.g. ``sql.SQL("now()")``).
    """
    sets = [sql.SQL("state = %(to_state)s"), sql.SQL("updated_at = now()")]
    params: dict[str, Any] = {"id": batch_id, "from": list(from_states), "to_state": to_state}
    for name, value in columns.items():
        if isinstance(value, sql.Composable):
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), value))
        else:
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = value
    query = sql.SQL(
        "UPDATE batchman.batches b SET {sets} FROM (SELECT id, state AS previous_state FROM batchman.batches"
        " WHERE id = %(id)s AND state = ANY(%(from)s) FOR UPDATE) old"
        " WHERE b.id = old.id RETURNING b.*, old.previous_state"
    ).format(sets=sql.SQL(", ").join(sets))
    row = conn.execute(query, params).fetchone()
    if row is not None and row["previous_state"] != to_state:
        conn.execute(RECORD_TRANSITION, (batch_id, row["previous_state"], to_state, reason))
    return row
