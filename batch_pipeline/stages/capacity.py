"""Capacity control: admit waiting batches while the model's enqueued-token budget has room.

OpenAI fails a batch with ``token_limit_exceeded`` when the model's queue is full, and offers no API
to ask how full it is. We keep our own ledger: the estimated tokens of our batches at OpenAI
(``openai_processing``/``cancelling``) per model, against the per-model limit. Waiting batches are
admitted oldest-fit-first: the oldest that fits goes next, and a smaller younger one may pass a big
one that does not fit yet.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from batch_pipeline.store import batches as store

WAITING_SCAN_LIMIT = 500


def admit_waiting(conn: psycopg.Connection, token_limit: Callable[[str], int]) -> list[tuple[int, int]]:
    """Admit what fits; returns (batch_id, launch_count) for each batch to hand to an upload run."""
    waiting = store.waiting_due(conn, WAITING_SCAN_LIMIT)
    if not waiting:
        return []
    models = sorted({w["model"] for w in waiting})
    reserved = store.reserved_by_model(conn, models)
    headroom = {m: token_limit(m) - reserved.get(m, 0) for m in models}
    admitted = []
    for w in waiting:
        model = w["model"]
        # With nothing of the model at OpenAI, the oldest batch goes even when its estimate exceeds
        # the limit (lowered after it was cut, or a generous estimate): OpenAI is the judge, and
        # otherwise it would wait forever.
        idle = reserved.get(model, 0) == 0 and headroom[model] == token_limit(model)
        if w["estimated_tokens"] <= headroom[model] or idle:
            row = store.admit(conn, w["id"])
            if row is not None:
                headroom[w["model"]] -= w["estimated_tokens"]
                admitted.append((row["id"], row["launch_count"]))
    conn.commit()
    return admitted


def token_limit_backoff_minutes(retries_so_far: int, schedule: tuple[float, ...]) -> float | None:
    """The wait before retry number ``retries_so_far + 1``, or None when the retries are spent."""
    return schedule[retries_so_far] if retries_so_far < len(schedule) else None
