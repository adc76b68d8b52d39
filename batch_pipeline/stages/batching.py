"""The batching stage: open a batch for each (endpoint, model) group that is full or stale.

Opening is one small INSERT per group; the upload run fills its batch with the group's oldest
requests (``store.batching.fill_batch``) in the transaction that claims it, so a sensor tick stays
cheap however much is queued.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.store.batching import BatchLimits, due_reason, open_batch, queued_groups

# The cap only bounds a tick after a long pause; the groups left over are opened at the next one.
MAX_OPENS_PER_TICK = 100


def open_due_batches(
    conn: psycopg.Connection, settings: Settings, limit_for: Callable[[str], int]
) -> list[int]:
    """Open a batch for every due group that has none open; its upload run fills it. Commits."""
    limits = BatchLimits.from_settings(settings)
    opened: list[int] = []
    for group in queued_groups(conn, limits):
        reason = due_reason(group, limits, limit_for(group.model))
        if reason and len(opened) < MAX_OPENS_PER_TICK:
            batch_id = open_batch(conn, group.endpoint, group.model, reason)
            if batch_id is not None:
                opened.append(batch_id)
    conn.commit()
    return opened
