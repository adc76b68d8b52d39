"""What the readiness check asks of the pipeline's dependencies."""

from __future__ import annotations

import psycopg

from batch_pipeline.states import WAITING_FOR_CREDENTIALS
from batch_pipeline.store import batch_actions
from batch_pipeline.store.migrate import check_schema


async def check_postgres(conn: psycopg.AsyncConnection) -> None:
    """Raises unless Postgres answers with our migrated schema."""
    await check_schema(conn)


async def openai_refusal(conn: psycopg.AsyncConnection) -> str | None:
    """Why the pipeline cannot reach OpenAI with our key, or None: batches wait while it refuses it."""
    waiting = await batch_actions.count_waiting_for(conn, WAITING_FOR_CREDENTIALS)
    if waiting == 0:
        return None
    return f"error: OpenAI refused the API key; {waiting} batches wait (check OPENAI_API_KEY)"
