"""The statements behind ``/metrics``: what the database knows, read at scrape time.

Each reads a partial index or a bounded time range, so a scrape stays cheap with a million requests
stored (EXPLAINs in tests/batch_pipeline/store/test_metrics.py). Counters over append-only tables
(delivery attempts, batch transitions, OpenAI call figures) are read as increments: the rows of one id
range, which the caller adds to its running totals (``admin.metrics``), not a count over the table.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

# Upper bounds, in milliseconds, of the delivery latency histogram (the last bucket is +Inf).
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)

# The queue per (endpoint, model): an index-only scan of requests_queued_idx (created_at is INCLUDEd).
QUEUE = """
SELECT endpoint, model, count(*) AS depth,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds
FROM batchman.requests WHERE state = 'pending' AND batch_id IS NULL
GROUP BY endpoint, model
"""
STATES_OF_BATCHES = "SELECT state, count(*) AS n FROM batchman.batches GROUP BY state"
# Results waiting to be delivered, and claimed by a delivery run: two partial indexes.
BACKLOG_OF_DELIVERIES = """
SELECT 'openai_processed' AS state, count(*) AS n FROM batchman.requests WHERE state = 'openai_processed'
UNION ALL
SELECT 'delivering', count(*) FROM batchman.requests WHERE state = 'delivering'
"""
# Per model: tokens OpenAI reported, and the lines of batches whose results were stored.
TOTALS_OF_BATCHES = """
SELECT model,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
       coalesce(sum(coalesce(openai_completed, 0) + coalesce(openai_failed, 0)) FILTER (
           WHERE state IN ('ready_to_deliver', 'delivering', 'delivered', 'partially_delivered',
                           'delivery_failed', 'resubmitted')), 0)::bigint AS result_lines
FROM batchman.batches GROUP BY model
"""
# The newest ids of the append-only tables (their primary keys' ends).
MAX_IDS = """
SELECT (SELECT coalesce(max(id), 0) FROM batchman.delivery_attempts) AS deliveries,
       (SELECT coalesce(max(id), 0) FROM batchman.batch_transitions) AS transitions,
       (SELECT coalesce(max(id), 0) FROM batchman.openai_calls) AS openai_calls
"""
# One id range of delivery attempts (a primary key range scan), by type, outcome and latency bucket:
# bucket i holds durations <= LATENCY_BUCKETS_MS[i]; len(LATENCY_BUCKETS_MS) is +Inf.
DELIVERIES_BETWEEN = """
SELECT coalesce(delivery_config ->> 'type', 'webhook') AS type, outcome,
       width_bucket(coalesce(duration_ms, 0) - 1, %(bounds)s::int[]) AS bucket,
       count(*) AS n, coalesce(sum(duration_ms), 0)::bigint AS ms
FROM batchman.delivery_attempts
WHERE id > %(after)s::bigint AND id <= %(upto)s::bigint
GROUP BY 1, 2, 3
"""
# One id range of batch state changes.
TRANSITIONS_BETWEEN = """
SELECT coalesce(from_state, '') AS from_state, to_state, count(*) AS n
FROM batchman.batch_transitions
WHERE id > %(after)s::bigint AND id <= %(upto)s::bigint
GROUP BY 1, 2
"""


async def _all(conn: psycopg.AsyncConnection, query: str, params: Any = None) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def queue(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    return await _all(conn, QUEUE)


async def batch_states(conn: psycopg.AsyncConnection) -> dict[str, int]:
    return {r["state"]: r["n"] for r in await _all(conn, STATES_OF_BATCHES)}


async def delivery_backlog(conn: psycopg.AsyncConnection) -> dict[str, int]:
    return {r["state"]: r["n"] for r in await _all(conn, BACKLOG_OF_DELIVERIES)}


async def batch_totals(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    return await _all(conn, TOTALS_OF_BATCHES)


async def max_ids(conn: psycopg.AsyncConnection) -> tuple[int, int, int]:
    """(newest delivery attempt id, newest batch transition id, newest OpenAI call figures id)."""
    row = (await _all(conn, MAX_IDS))[0]
    return row["deliveries"], row["transitions"], row["openai_calls"]


async def deliveries_between(conn: psycopg.AsyncConnection, after: int, upto: int) -> list[dict[str, Any]]:
    params = {"after": after, "upto": upto, "bounds": list(LATENCY_BUCKETS_MS)}
    return await _all(conn, DELIVERIES_BETWEEN, params)


async def transitions_between(conn: psycopg.AsyncConnection, after: int, upto: int) -> list[dict[str, Any]]:
    return await _all(conn, TRANSITIONS_BETWEEN, {"after": after, "upto": upto})
