"""OpenAI webhook deliveries (table ``batchman.openai_webhook_events``) and the poll they hint at.

Async, on the API's pool, in the caller's transaction. The table exists to recognise a redelivered
event by its ``webhook-id``: OpenAI retries a delivery until it gets a 2xx.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import tuple_row

from batch_pipeline.states import AT_OPENAI

RECORD_WEBHOOK_EVENT = """
INSERT INTO batchman.openai_webhook_events (webhook_id, event_type, openai_batch_id) VALUES (%s, %s, %s)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING webhook_id
"""
# Only batches OpenAI may still be working on are polled; a finished one has nothing more to learn.
POLL_NOW = """
UPDATE batchman.batches SET next_check_at = now(), updated_at = now()
WHERE openai_batch_id = %s AND state = ANY(%s)
RETURNING id
"""


async def record_event(
    conn: psycopg.AsyncConnection, webhook_id: str, event_type: str, openai_batch_id: str | None
) -> bool:
    """Store one delivery; False when this ``webhook_id`` was recorded before (a redelivery)."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(RECORD_WEBHOOK_EVENT, (webhook_id, event_type, openai_batch_id))
    return await cur.fetchone() is not None


async def poll_now(conn: psycopg.AsyncConnection, openai_batch_id: str) -> int | None:
    """Make the status check of our batch with this OpenAI id due now; its id, or None when no batch
    of ours at OpenAI has it."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(POLL_NOW, (openai_batch_id, list(AT_OPENAI)))
    row = await cur.fetchone()
    return row[0] if row else None
