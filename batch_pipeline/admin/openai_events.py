"""OpenAI's webhook events as a "check this batch now" hint.

Polling stays the baseline (a self-hosted service is often unreachable from OpenAI); an event only
makes its batch's next status check due at once. A lost event costs only the wait for the next
scheduled check; a redelivered one changes nothing.
"""

from __future__ import annotations

import psycopg

from batch_pipeline.store import webhook_events as store


async def record_openai_event(
    conn: psycopg.AsyncConnection, webhook_id: str, event_type: str, openai_batch_id: str | None
) -> tuple[bool, int | None]:
    """Record an OpenAI webhook delivery; for ``batch.*`` make that batch's next status check due now.

    Returns (new, our batch id or None). A redelivered ``webhook-id`` is not new and changes nothing.
    One transaction, so a crash never records an event whose hint was lost.
    """
    async with conn.transaction():
        if not await store.record_event(conn, webhook_id, event_type, openai_batch_id):
            return False, None
        if not (event_type.startswith("batch.") and openai_batch_id):
            return True, None
        return True, await store.poll_now(conn, openai_batch_id)
