"""Token usage OpenAI reported, summed per model and a grouping key (model, day or endpoint).

Read from ``batchman.batches`` (the ``usage`` of each OpenAI batch, recorded by the status stage), a
table of thousands of rows where requests number millions. Grouped by model as well, because prices
are per model; ``admin.usage`` prices and folds the groups.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# Only batches OpenAI reported usage for; "requests" counts the lines OpenAI completed.
USAGE_GROUPED = """
SELECT {key} AS key, model, count(*) AS batches, sum(coalesce(openai_completed, 0)) AS requests,
       sum(input_tokens) AS input_tokens, sum(coalesce(cached_tokens, 0)) AS cached_tokens,
       sum(coalesce(output_tokens, 0)) AS output_tokens
FROM batchman.batches
WHERE input_tokens IS NOT NULL
GROUP BY 1, 2
ORDER BY 1, 2
"""

# The grouping keys, fixed expressions: the day is the UTC date the batch finished (else last changed).
GROUP_KEYS = {
    "model": sql.SQL("model"),
    "endpoint": sql.SQL("endpoint"),
    "day": sql.SQL("to_char(coalesce(completed_at, updated_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
}

USAGE_OF_A_BATCH = """
SELECT id, model, endpoint, request_count, openai_completed, estimated_tokens,
       input_tokens, cached_tokens, output_tokens, reasoning_tokens
FROM batchman.batches WHERE id = %s
"""


async def usage_groups(conn: psycopg.AsyncConnection, group_by: str) -> list[dict[str, Any]]:
    """One row per (key, model); ``group_by`` is a key of GROUP_KEYS (KeyError otherwise)."""
    query = sql.SQL(USAGE_GROUPED).format(key=GROUP_KEYS[group_by])
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query)
    return await cur.fetchall()


async def batch_usage(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(USAGE_OF_A_BATCH, (batch_id,))
    return await cur.fetchone()
