"""Changing a stored request from the operator UI: its delivery configuration."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

# Receiver credentials (webhook ``headers``) are never shown, so the form cannot send them back: a
# webhook that stays a webhook keeps the stored ones; a change of type drops them with the old kind.
UPDATE_DELIVERY_CONFIG = """
UPDATE batchman.requests
SET delivery_config = CASE
        WHEN %(cfg)s->>'type' = 'webhook' AND delivery_config->>'type' = 'webhook'
             AND delivery_config ? 'headers'
        THEN %(cfg)s || jsonb_build_object('headers', delivery_config->'headers')
        ELSE %(cfg)s END,
    updated_at = now()
WHERE custom_id = %(custom_id)s
RETURNING id
"""


async def update_delivery_config(conn: psycopg.AsyncConnection, custom_id: str, cfg: dict) -> bool:
    """False when there is no such request."""
    cur = await conn.execute(UPDATE_DELIVERY_CONFIG, {"cfg": Jsonb(cfg), "custom_id": custom_id})
    return await cur.fetchone() is not None
