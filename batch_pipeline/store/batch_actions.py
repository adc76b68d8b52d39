"""The statements behind the operator's reads and actions on batches (``batch_pipeline.admin``).

Async, on the API's pool, whose connections return tuples: each cursor here asks for dicts. The
caller holds the transaction and decides what a result means. The pipeline's own statements on
batches are in ``store.batches``.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_pipeline.states import (
    BEFORE_OPENAI,
    CANCELLABLE_REQUESTS,
    FINISHED,
    RESTARTABLE_REQUESTS,
)
from batch_pipeline.store.batches import GET_BATCH
from batch_pipeline.store.transitions import transition_async

SUMMARY_COLUMNS = """
id, endpoint, model, state, request_count, size_bytes, estimated_tokens, openai_batch_id, openai_status,
openai_completed, openai_failed, openai_total, error_msg, next_check_at, created_at, updated_at, completed_at
"""
# Newest first; keyset pagination on id (``before`` is the last id of the previous page). {where} is
# composed by ``list_batches`` from fixed column names; every value is a parameter.
LIST_BATCHES = "SELECT " + SUMMARY_COLUMNS + " FROM batchman.batches WHERE {where} ORDER BY id DESC LIMIT %s"
GET_STATE = "SELECT id, state, openai_batch_id, openai_status FROM batchman.batches WHERE id = %s"
# A restart locks the batch first: its requests move only while it is 'failed', and stays so.
LOCK_BATCH = "SELECT id, state, resubmitted_count FROM batchman.batches WHERE id = %s FOR UPDATE"
# Served by the partial index requests_batch_idx (batch_id, state).
REQUEST_COUNTS = "SELECT state, count(*) AS n FROM batchman.requests WHERE batch_id = %s GROUP BY state"
TRANSITION_HISTORY = """
SELECT from_state, to_state, reason, transitioned_at FROM batchman.batch_transitions
WHERE batch_id = %s ORDER BY transitioned_at, id
"""
CHECK_CAPACITY_NOW = """
UPDATE batchman.batches SET next_check_at = now(), updated_at = now()
WHERE id = %s AND state = 'waiting_for_capacity'
RETURNING id, state, next_check_at
"""
CANCEL_REQUESTS = """
UPDATE batchman.requests SET state = 'cancelled', updated_at = now()
WHERE batch_id = %s AND state = ANY(%s)
"""
# Undelivered requests of a failed batch back to the queue: ``states.RESTARTABLE_REQUESTS``, and
# 'failed' ones without a result (with one, the error line was or will be delivered).
REQUEUE_REQUESTS = """
UPDATE batchman.requests
SET state = 'pending', batch_id = NULL, result = NULL, error_msg = NULL, next_attempt_at = NULL,
    claimed_until = NULL, delivery_retries = 0, updated_at = now()
WHERE batch_id = %s AND (state = ANY(%s) OR (state = 'failed' AND result IS NULL))
"""
# Requests, their attempts and the transitions cascade.
DELETE_FINISHED = "DELETE FROM batchman.batches WHERE id = %s AND state = ANY(%s) RETURNING id"
# A batch ending here keeps its first completion time: retention counts from it.
KEEP_COMPLETED_AT = sql.SQL("coalesce(completed_at, now())")


async def list_batches(
    conn: psycopg.AsyncConnection,
    limit: int,
    before: int | None = None,
    *,
    state: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """Batch summaries, newest first, with the given column values (None: any)."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("state", state), ("model", model), ("endpoint", endpoint)):
        if value is not None:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if before is not None:
        clauses.append(sql.SQL("id < %s"))
        params.append(before)
    where = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql.SQL(LIST_BATCHES).format(where=where), (*params, limit))
    return await cur.fetchall()


async def _one(conn: psycopg.AsyncConnection, query: str, params: tuple) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchone()


async def get_batch_async(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    """Every column of the batch (``get_batch`` on an async connection)."""
    return await _one(conn, GET_BATCH, (batch_id,))


async def batch_state(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    """id, state, openai_batch_id and openai_status, or None when there is no such batch."""
    return await _one(conn, GET_STATE, (batch_id,))


async def lock_batch(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    """id, state and resubmitted_count, the row locked until the transaction ends."""
    return await _one(conn, LOCK_BATCH, (batch_id,))


async def request_counts(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, int]:
    """The batch's requests per state (states without any are absent)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(REQUEST_COUNTS, (batch_id,))
    return {row["state"]: row["n"] for row in await cur.fetchall()}


async def transition_history(conn: psycopg.AsyncConnection, batch_id: int) -> list[dict[str, Any]]:
    """Every state change of the batch, oldest first."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(TRANSITION_HISTORY, (batch_id,))
    return await cur.fetchall()


async def check_capacity_now(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    """Make a waiting batch's admission check due now; None when it is not waiting for capacity."""
    return await _one(conn, CHECK_CAPACITY_NOW, (batch_id,))


async def start_cancelling(
    conn: psycopg.AsyncConnection, batch_id: int, reason: str
) -> dict[str, Any] | None:
    """openai_processing → cancelling, its status check due now (it collects the partial results)."""
    return await transition_async(
        conn, batch_id, ("openai_processing",), "cancelling", reason, next_check_at=sql.SQL("now()")
    )


async def cancel_before_openai(
    conn: psycopg.AsyncConnection, batch_id: int, reason: str
) -> tuple[dict[str, Any] | None, int]:
    """A batch OpenAI does not have yet → cancelled, with its requests that had not run.

    (the moved row or None when the batch was not before OpenAI, the number of requests cancelled).
    """
    row = await transition_async(
        conn, batch_id, BEFORE_OPENAI, "cancelled", reason, next_check_at=None, completed_at=KEEP_COMPLETED_AT
    )
    if row is None:
        return None, 0
    cur = await conn.execute(CANCEL_REQUESTS, (batch_id, list(CANCELLABLE_REQUESTS)))
    return row, cur.rowcount


async def requeue_undelivered(conn: psycopg.AsyncConnection, batch_id: int) -> int:
    """Put the requests of a (failed) batch no client has received anything for back in the queue."""
    cur = await conn.execute(REQUEUE_REQUESTS, (batch_id, list(RESTARTABLE_REQUESTS)))
    return cur.rowcount


async def mark_resubmitted(
    conn: psycopg.AsyncConnection, batch_id: int, resubmitted_count: int, reason: str
) -> dict[str, Any] | None:
    """failed → resubmitted, with its new ``resubmitted_count`` (read under ``lock_batch``)."""
    return await transition_async(
        conn,
        batch_id,
        ("failed",),
        "resubmitted",
        reason,
        resubmitted_count=resubmitted_count,
        next_check_at=None,
        completed_at=KEEP_COMPLETED_AT,
    )


async def delete_finished(conn: psycopg.AsyncConnection, batch_id: int) -> bool:
    """Delete the batch if it is finished (``states.FINISHED``); False when it is not (or is gone)."""
    cur = await conn.execute(DELETE_FINISHED, (batch_id, list(FINISHED)))
    return cur.rowcount > 0


WAITING_FOR = """
SELECT count(*) AS n FROM batchman.batches
WHERE state = 'waiting_for_capacity' AND capacity_wait_reason = %s
"""


async def count_waiting_for(conn: psycopg.AsyncConnection, reason: str) -> int:
    """Batches waiting for capacity for ``reason`` (e.g. ``states.WAITING_FOR_CREDENTIALS``)."""
    row = await _one(conn, WAITING_FOR, (reason,))
    return row["n"] if row else 0
