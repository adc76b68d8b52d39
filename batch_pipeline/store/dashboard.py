"""The operator UI's overview reads: counts per state, batches in flight, hourly activity, capacity.

Each is one statement over the whole table or an index range; the API caches their results for a few
seconds (``admin.dashboard``), so a dashboard left open costs the database one round of these per
interval, however many tabs poll it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

# Requests per state, and per hour of arrival over the last day, in one pass over the table.
REQUEST_STATE_COUNTS = "SELECT state, count(*) AS n FROM batchman.requests GROUP BY state"
# The BRIN index on created_at (migration 0005) limits this to the last day's block ranges.
REQUESTS_TAKEN_PER_HOUR = """
SELECT date_trunc('hour', created_at) AS hour, count(*) AS n FROM batchman.requests
WHERE created_at >= date_trunc('hour', now()) - interval '23 hours'
GROUP BY 1 ORDER BY 1
"""
COUNTS_OF_BATCH_STATES = "SELECT state, count(*) AS n FROM batchman.batches GROUP BY state"
# Served by the partial index batches_in_flight_idx.
IN_FLIGHT = """
SELECT id, endpoint, model, state, request_count, openai_batch_id, openai_status, openai_completed,
       openai_failed, openai_total, created_at, updated_at
FROM batchman.batches WHERE state IN ('openai_processing', 'cancelling')
ORDER BY id DESC LIMIT %s
"""
# Delivery attempts per hour and outcome over the last day (BRIN index on attempted_at, 0005).
DELIVERIES_PER_HOUR = """
SELECT date_trunc('hour', attempted_at) AS hour, count(*) FILTER (WHERE outcome = 'success') AS ok,
       count(*) AS n
FROM batchman.delivery_attempts
WHERE attempted_at >= date_trunc('hour', now()) - interval '23 hours'
GROUP BY 1 ORDER BY 1
"""
# What a waiting batch's model already has at OpenAI (the admission arithmetic's left-hand side).
RESERVED_AT_OPENAI = """
SELECT coalesce(sum(estimated_tokens), 0) AS tokens, count(*) AS batches FROM batchman.batches
WHERE model = %s AND state IN ('openai_processing', 'cancelling') AND id <> %s
"""
# Requests waiting for the batching sensor (partial index requests_queued_idx).
QUEUED_REQUESTS = "SELECT count(*) AS n FROM batchman.requests WHERE state = 'pending' AND batch_id IS NULL"


async def _all(conn: psycopg.AsyncConnection, query: str, params: tuple = ()) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def request_state_counts(conn: psycopg.AsyncConnection) -> dict[str, int]:
    return {r["state"]: r["n"] for r in await _all(conn, REQUEST_STATE_COUNTS)}


async def batch_state_counts(conn: psycopg.AsyncConnection) -> dict[str, int]:
    return {r["state"]: r["n"] for r in await _all(conn, COUNTS_OF_BATCH_STATES)}


async def intake_per_hour(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    return await _all(conn, REQUESTS_TAKEN_PER_HOUR)


async def deliveries_per_hour(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    return await _all(conn, DELIVERIES_PER_HOUR)


async def in_flight(conn: psycopg.AsyncConnection, limit: int) -> list[dict[str, Any]]:
    return await _all(conn, IN_FLIGHT, (limit,))


async def reserved_at_openai(conn: psycopg.AsyncConnection, model: str, except_id: int) -> dict[str, int]:
    rows = await _all(conn, RESERVED_AT_OPENAI, (model, except_id))
    return {"tokens": int(rows[0]["tokens"]), "batches": int(rows[0]["batches"])}


async def queued_requests(conn: psycopg.AsyncConnection) -> int:
    return int((await _all(conn, QUEUED_REQUESTS))[0]["n"])


# The request's JSONL line as sent to OpenAI (the listing and the API leave it out: it can be large).
REQUEST_PAYLOAD = "SELECT payload FROM batchman.requests WHERE id = %s"


async def request_payload(conn: psycopg.AsyncConnection, request_id: int) -> str | None:
    rows = await _all(conn, REQUEST_PAYLOAD, (request_id,))
    return rows[0]["payload"] if rows else None
