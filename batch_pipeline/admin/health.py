"""What the readiness check asks of the pipeline's dependencies."""

from __future__ import annotations

import psycopg

from batch_pipeline.store.migrate import check_schema


async def check_postgres(conn: psycopg.AsyncConnection) -> None:
    """Raises unless Postgres answers with our migrated schema."""
    await check_schema(conn)
