"""Cutting batches: find (endpoint, model) groups that are full or stale, and assign their requests.

Both are set-based and read only the partial index of queued requests (``state = 'pending' AND
batch_id IS NULL``), so a sensor tick stays cheap however many requests wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

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
SELECT g.endpoint, g.model, head.oldest, head.requests, head.bytes, head.tokens, head.inputs
FROM g, LATERAL (
    SELECT min(q.created_at) AS oldest, count(*) AS requests, sum(q.payload_bytes + 1) AS bytes,
           sum(q.estimated_tokens) AS tokens, sum(q.input_count) AS inputs
    FROM (
        SELECT created_at, payload_bytes, estimated_tokens, input_count FROM batchman.requests
        WHERE state = 'pending' AND batch_id IS NULL AND endpoint = g.endpoint AND model = g.model
        ORDER BY id LIMIT %(max_requests)s
    ) q
) head
"""

# One statement: take the group's oldest requests (skipping rows another transaction holds), keep
# the longest prefix within every limit, create the batch and assign them. The INSERT only happens
# when at least one request fits.
CUT_BATCH = """
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
), batch AS (
    INSERT INTO batchman.batches (endpoint, model, state, request_count, size_bytes, estimated_tokens)
    SELECT %(endpoint)s, %(model)s, 'ready', count(*), sum(payload_bytes + 1), sum(estimated_tokens)
    FROM chosen HAVING count(*) > 0
    RETURNING id, request_count, size_bytes, estimated_tokens
), assigned AS (
    UPDATE batchman.requests r SET batch_id = batch.id, updated_at = now()
    FROM chosen, batch WHERE r.id = chosen.id
    RETURNING r.id
)
SELECT batch.id, batch.request_count, batch.size_bytes, batch.estimated_tokens,
       (SELECT count(*) FROM assigned) AS assigned
FROM batch
"""


@dataclass(frozen=True)
class BatchLimits:
    max_requests: int
    max_bytes: int
    max_age_seconds: int
    max_inputs: int = 50_000


@dataclass(frozen=True)
class QueuedGroup:
    endpoint: str
    model: str
    requests: int
    bytes: int
    tokens: int
    inputs: int
    age_seconds: float


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
            r["endpoint"], r["model"], r["requests"], r["bytes"], r["tokens"], r["inputs"], float(r["age"])
        )
        for r in rows
    ]


def due_reason(group: QueuedGroup, limits: BatchLimits, token_limit: int) -> str | None:
    """Why this group should be cut now ('full: …' / 'stale: …'), or None to keep waiting."""
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


def cut_batch(
    conn: psycopg.Connection, endpoint: str, model: str, limits: BatchLimits, token_limit: int, reason: str
) -> dict | None:
    """Create one batch from the group's oldest requests, within every limit. Commits. None if empty."""
    row = conn.execute(
        CUT_BATCH,
        {
            "endpoint": endpoint,
            "model": model,
            "max_requests": limits.max_requests,
            "max_bytes": limits.max_bytes,
            "max_tokens": token_limit,
            "max_inputs": limits.max_inputs,
        },
    ).fetchone()
    if row is not None:
        conn.execute(RECORD_TRANSITION, (row["id"], None, "ready", reason))
    conn.commit()
    return row
