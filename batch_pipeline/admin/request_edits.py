"""Operator edits of a stored request (the UI's request page). The caller validates the new delivery
configuration with the intake's own rules first (``IntakeService.check``); this stores it."""

from __future__ import annotations

from typing import Any

import psycopg

from batch_pipeline.admin.errors import RequestNotFound
from batch_pipeline.store import request_edits as store


async def update_delivery_config(conn: psycopg.AsyncConnection, custom_id: str, cfg: dict[str, Any]) -> None:
    """Where the request's result goes from now on (any state: the next delivery uses it)."""
    async with conn.transaction():
        if not await store.update_delivery_config(conn, custom_id, cfg):
            raise RequestNotFound(custom_id)
