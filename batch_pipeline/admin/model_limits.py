"""Per-model enqueued-token limits as the settings API shows and edits them.

The built-in defaults and the lookup rule are ``batch_pipeline.model_limits``; operator overrides are
rows in ``store.model_limits``. A change reaches intake when the API drops the intake's cached copy,
and the pipeline at its next sensor tick, which reads the overrides each time.
"""

from __future__ import annotations

from typing import Any

import psycopg

from batch_pipeline.model_limits import DEFAULT_TOKEN_LIMITS, FALLBACK_TOKEN_LIMIT, token_limit_for
from batch_pipeline.store import model_limits as store


async def model_limits(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    """Built-in defaults, operator overrides, the fallback, and what applies to each known prefix."""
    async with conn.transaction():
        overrides = await store.list_override_rows(conn)
    table = {o["model_prefix"]: o["token_limit"] for o in overrides}
    prefixes = sorted({*DEFAULT_TOKEN_LIMITS, *table})
    return {
        "defaults": [{"model_prefix": p, "token_limit": v} for p, v in sorted(DEFAULT_TOKEN_LIMITS.items())],
        "overrides": overrides,
        "fallback_token_limit": FALLBACK_TOKEN_LIMIT,
        "effective": {p: token_limit_for(p, table) for p in prefixes},
    }


async def put_model_limit(
    conn: psycopg.AsyncConnection, model_prefix: str, token_limit: int
) -> dict[str, Any]:
    """Set the limit for models starting with ``model_prefix``; the stored override."""
    async with conn.transaction():
        return await store.upsert_override(conn, model_prefix, token_limit)


async def delete_model_limit(conn: psycopg.AsyncConnection, model_prefix: str) -> bool:
    """False when there was no override for ``model_prefix``."""
    async with conn.transaction():
        return await store.delete_override(conn, model_prefix)
