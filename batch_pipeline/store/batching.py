"""Cutting batches: find (endpoint, model) groups that are full or stale, and assign their requests.

Both are set-based and read only the partial index of queued requests (``state = 'pending' AND
batch_id IS NULL``), so a sensor tick stays cheap however many requests wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.store.transitions import RECORD_TRANSITION

# Distinct queued groups by a loose index scan (one index probe per group, not a scan of all rows),
# then per group: the oldest request, and the totals of the first ``max_requests`` requests in
# arrival order, which is what the next batch of that group would hold.
QUEUED_GROUPS = """
WITH RECURSIVE g AS (
    (SELECT endpoint, model FROM batchman.requests
     WHERE state = 'pending' AND batch_id IS NULL ORDER BY endpoint, model LIMIT 1)
    UNION ALL
    SELECT n.endpoint, n.model FROM g, LATERAL (
        SELECT endpoint, model FROM batchman.requests
        WHERE state = 'pending' AND batch_id IS NULL AND (endpoint, model) > (g.endpoint, g.model)
        ORDER BY endpoint, model LIMIT 1
    ) n
)
SELECT g.endpoint, g.model, head.oldest, head.requests, head.bytes, head.tokens, head.inputs,
       first.payload_bytes + 1 AS first_bytes, first.estimated_tokens AS first_tokens,
       first.input_count AS first_inputs
FROM g, LATERAL (
    SELECT payload_bytes, estimated_tokens, input_count FROM batchman.requests
    WHERE state = 'pending' AND batch_id IS NULL AND endpoint = g.endpoint AND model = g.model
    ORDER BY id LIMIT 1
) first, LATERAL (
    SELECT min(q.created_at) AS oldest, count(*) AS requests, sum(q.payload_bytes + 1) AS bytes,
           sum(q.estimated_tokens) AS tokens, sum(q.input_count) AS inputs
    FROM (
        SELECT created_at, payload_bytes, estimated_tokens, input_count FROM batchman.requests
        WHERE state = 'pending' AND batch_id IS NULL AND endpoint = g.endpoint AND model = g.model
        ORDER BY id LIMIT %(max_requests)s
    ) q
) head
"""

# Opening a batch is one small INSERT; filling it rewrites each of its requests (about 2 s for 50,000
# on a small machine). So the batching sensor only opens batches, one per due group at a time (the
# NOT EXISTS), and the upload run fills its batch in its first transaction: a sensor tick stays well
# under a second however much is queued.
OPEN_BATCH = """
INSERT INTO batchman.batches (endpoint, model, state)
SELECT %(endpoint)s, %(model)s, 'ready'
WHERE NOT EXISTS (
    SELECT 1 FROM batchman.batches
    WHERE state = 'ready' AND request_count = 0 AND endpoint = %(endpoint)s AND model = %(model)s
)
RETURNING id
"""

NEW_BATCH = "INSERT INTO batchman.batches (endpoint, model, state) VALUES (%s, %s, 'ready') RETURNING id"
DROP_EMPTY_BATCH = "DELETE FROM batchman.batches WHERE id = %s AND request_count = 0"

# One statement fills a batch: take the group's oldest requests (skipping rows another transaction
# holds), keep the longest prefix within every limit, assign them and record the totals.
FILL_BATCH = """
WITH picked AS (
    SELECT id, payload_bytes, estimated_tokens, input_count FROM batchman.requests
    WHERE state = 'pending' AND batch_id IS NULL AND endpoint = %(endpoint)s AND model = %(model)s
    ORDER BY id LIMIT %(max_requests)s
    FOR UPDATE SKIP LOCKED
), running AS (
    SELECT id,
           sum(payload_bytes + 1) OVER w AS bytes,
           sum(estimated_tokens) OVER w AS tokens,
           sum(input_count) OVER w AS inputs,
           payload_bytes, estimated_tokens
    FROM picked WINDOW w AS (ORDER BY id)
), chosen AS (
    SELECT id, payload_bytes, estimated_tokens FROM running
    WHERE bytes <= %(max_bytes)s AND tokens <= %(max_tokens)s AND inputs <= %(max_inputs)s
), assigned AS (
    UPDATE batchman.requests r SET batch_id = %(batch_id)s, updated_at = now()
    FROM chosen WHERE r.id = chosen.id
    RETURNING r.id
)
UPDATE batchman.batches b
SET request_count = t.n, size_bytes = t.bytes, estimated_tokens = t.tokens, updated_at = now()
FROM (
    SELECT count(*) AS n, coalesce(sum(payload_bytes + 1), 0) AS bytes,
           coalesce(sum(estimated_tokens), 0) AS tokens
    FROM chosen
) t
WHERE b.id = %(batch_id)s
RETURNING b.id, b.request_count, b.size_bytes, b.estimated_tokens
"""


@dataclass(frozen=True)
class BatchLimits:
    max_requests: int
    max_bytes: int
    max_age_seconds: int
    max_inputs: int = 50_000

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchLimits:
        return cls(settings.batch_max_requests, settings.batch_max_bytes, settings.batch_max_age_seconds)


@dataclass(frozen=True)
class QueuedGroup:
    endpoint: str
    model: str
    requests: int
    bytes: int
    tokens: int
    inputs: int
    age_seconds: float
    # The oldest request alone: a batch must start with it, so if it exceeds a limit (lowered after
    # it was accepted) no batch can be cut until the limit is raised again.
    first_bytes: int = 0
    first_tokens: int = 0
    first_inputs: int = 0


def queued_groups(conn: psycopg.Connection, limits: BatchLimits) -> list[QueuedGroup]:
    # The planner's cost for a large queue triggers JIT compilation, which costs more (~100 ms)
    # than the index-only scan it would speed up.
    conn.execute("SET LOCAL jit = off")
    rows = conn.execute(
        "SELECT *, extract(epoch FROM now() - oldest) AS age FROM (" + QUEUED_GROUPS + ") s",
        {"max_requests": limits.max_requests},
    ).fetchall()
    return [
        QueuedGroup(
            r["endpoint"],
            r["model"],
            r["requests"],
            r["bytes"],
            r["tokens"],
            r["inputs"],
            float(r["age"]),
            r["first_bytes"],
            r["first_tokens"],
            r["first_inputs"],
        )
        for r in rows
    ]


def due_reason(group: QueuedGroup, limits: BatchLimits, token_limit: int) -> str | None:
    """Why this group should be cut now ('full: …' / 'stale: …'), or None to keep waiting."""
    if (
        group.first_bytes > limits.max_bytes
        or group.first_tokens > token_limit
        or group.first_inputs > limits.max_inputs
    ):
        return None  # nothing would fit; it stays queued (visible in the API) until a limit is raised
    if group.requests >= limits.max_requests:
        return f"full: {group.requests} requests"
    if group.bytes >= limits.max_bytes:
        return f"full: {group.bytes} bytes"
    if group.tokens >= token_limit:
        return f"full: {group.tokens} estimated tokens (model limit {token_limit})"
    if group.inputs >= limits.max_inputs:
        return f"full: {group.inputs} embedding inputs"
    if group.age_seconds >= limits.max_age_seconds:
        return f"stale: oldest request waited {int(group.age_seconds)} s"
    return None


def open_batch(conn: psycopg.Connection, endpoint: str, model: str, reason: str) -> int | None:
    """Open an empty batch for the group unless one is open already (the upload run fills it)."""
    row = conn.execute(OPEN_BATCH, {"endpoint": endpoint, "model": model}).fetchone()
    if row is not None:
        conn.execute(RECORD_TRANSITION, (row["id"], None, "ready", reason))
    return row["id"] if row else None


def fill_batch(conn: psycopg.Connection, batch: dict, limits: BatchLimits, token_limit: int) -> dict:
    """Assign the group's oldest queued requests to ``batch`` (open: no requests yet), within every limit."""
    return conn.execute(
        FILL_BATCH,
        {
            "batch_id": batch["id"],
            "endpoint": batch["endpoint"],
            "model": batch["model"],
            "max_requests": limits.max_requests,
            "max_bytes": limits.max_bytes,
            "max_tokens": token_limit,
            "max_inputs": limits.max_inputs,
        },
    ).fetchone()


def cut_batch(
    conn: psycopg.Connection, endpoint: str, model: str, limits: BatchLimits, token_limit: int, reason: str
) -> dict | None:
    """Open and fill one batch now from the group's oldest requests. Commits. None if none fit."""
    batch_id = conn.execute(NEW_BATCH, (endpoint, model)).fetchone()["id"]
    row = fill_batch(conn, {"id": batch_id, "endpoint": endpoint, "model": model}, limits, token_limit)
    if row["request_count"] == 0:
        conn.execute(DROP_EMPTY_BATCH, (batch_id,))
        conn.commit()
        return None
    conn.execute(RECORD_TRANSITION, (batch_id, None, "ready", reason))
    conn.commit()
    return row
