"""Delivery state in the app tables: claims with a lease, attempts in bulk, batch outcome, redelivery.

Request states: ``openai_processed`` (due when ``next_attempt_at <= now()``) → ``delivering`` (claimed
until ``claimed_until``) → ``delivered`` / ``failed`` (failed at OpenAI, result delivered) /
``delivery_failed`` (final), or back to ``openai_processed`` with a later ``next_attempt_at``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from batch_pipeline.states import DELIVERABLE, FINISHED_DELIVERY, REDELIVER_BATCH_REQUESTS
from batch_pipeline.store.records import Attempt, Delivery

# Due requests of one batch, and claims whose lease ran out (their run crashed). SKIP LOCKED: two
# runs never claim the same row; the lease: a crashed run's rows come back. Two scans, each on an
# index holding just its rows in id order (0010; one OR over both states walked past every row of
# the batch already delivered), and rows updated by primary key (a join on the CTE was planned as a
# hash join over a sequential scan of the whole table).
CLAIM = """
WITH fresh AS (
    SELECT id FROM batchman.requests
    WHERE batch_id = %(batch_id)s AND state = 'openai_processed' AND next_attempt_at <= now()
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id FROM batchman.requests
    WHERE batch_id = %(batch_id)s AND state = 'delivering' AND claimed_until < now()
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE batchman.requests r
SET state = 'delivering', claimed_until = now() + make_interval(secs => %(lease)s), updated_at = now()
WHERE r.id = ANY(ARRAY(SELECT id FROM fresh UNION ALL SELECT id FROM expired ORDER BY id LIMIT %(limit)s))
RETURNING r.id, r.custom_id, r.delivery_config::text, r.result::text, r.error_msg IS NOT NULL,
          r.delivery_retries
"""

# Every attempt and its request's new state, in one statement. The outcomes come as one JSON array
# of [id, state, delay, outcome, http_status, duration_ms, error, attempted_at]: ~7x cheaper for the
# client to encode than eight typed arrays. delay NULL: a final state. Only rows still claimed move
# (a cancel in between wins), but every attempt is recorded, with a snapshot of its delivery_config
# less the receiver's credential headers (those live on the request row only).
RECORD = """
WITH v AS (
    SELECT (e->>0)::bigint AS id, e->>1 AS state, (e->>2)::float8 AS delay, e->>3 AS outcome,
           (e->>4)::int AS http_status, (e->>5)::int AS duration_ms, e->>6 AS error_msg,
           (e->>7)::timestamptz AS attempted_at
    FROM jsonb_array_elements(%s::jsonb) AS e
), moved AS (
    UPDATE batchman.requests r
    SET state = v.state,
        next_attempt_at = CASE WHEN v.delay IS NULL THEN r.next_attempt_at
                               ELSE now() + make_interval(secs => v.delay) END,
        delivery_retries = CASE WHEN v.state = 'openai_processed' THEN r.delivery_retries + 1 ELSE 0 END,
        delivery_attempt_count = r.delivery_attempt_count + 1, claimed_until = NULL, updated_at = now()
    FROM v
    WHERE r.id = ANY(ARRAY(SELECT id FROM v)) AND r.id = v.id AND r.state = 'delivering'
    RETURNING r.id, r.delivery_config
)
INSERT INTO batchman.delivery_attempts
    (request_id, delivery_config, outcome, http_status, duration_ms, error_msg, attempted_at)
SELECT v.id,
       CASE WHEN jsonb_typeof(c.config) = 'object' THEN c.config - 'headers' ELSE c.config END,
       v.outcome, v.http_status, v.duration_ms, v.error_msg, v.attempted_at
FROM v LEFT JOIN moved m ON m.id = v.id
CROSS JOIN LATERAL (  -- a row no longer claimed was not in moved: read its config
    SELECT coalesce(m.delivery_config, (SELECT r.delivery_config FROM batchman.requests r WHERE r.id = v.id))
) AS c(config)
WHERE c.config IS NOT NULL
"""

COUNT_BATCH_REQUESTS = """
SELECT count(*) FILTER (WHERE state IN ('openai_processed', 'delivering')) AS open,
       count(*) FILTER (WHERE state IN ('delivered', 'failed')) AS delivered,
       count(*) FILTER (WHERE state = 'delivery_failed') AS failed
FROM batchman.requests WHERE batch_id = %s
"""

# A conditional batch transition with its audit row, in one statement; no row back: not moved.
# Entering a final delivery state records completed_at, which retention counts from; the first
# completion is kept, so a redelivery does not restart the retention period.
TRANSITION = """
WITH old AS (
    SELECT id, state FROM batchman.batches
    WHERE id = %(batch_id)s AND state = ANY(%(from_states)s) FOR UPDATE
), moved AS (
    UPDATE batchman.batches b SET state = %(to_state)s, updated_at = now(),
        completed_at = CASE WHEN %(to_state)s = ANY(%(finished)s)
                            THEN coalesce(b.completed_at, now()) ELSE b.completed_at END
    FROM old WHERE b.id = old.id
    RETURNING b.id, old.state AS from_state
)
INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason)
SELECT id, from_state, %(to_state)s, %(reason)s FROM moved
RETURNING from_state
"""


def _moved(batch_id: int, from_states: Sequence[str], to_state: str, reason: str) -> dict[str, Any]:
    """The parameters of ``TRANSITION``."""
    return {
        "batch_id": batch_id,
        "from_states": list(from_states),
        "to_state": to_state,
        "reason": reason,
        "finished": list(FINISHED_DELIVERY),
    }


GET_BATCH = "SELECT id, state, delivery_wave, delivery_requested_at FROM batchman.batches WHERE id = %s"

# Batches that need a delivery run: new ones, ones with due retries or expired claims (also after a
# per-request redelivery of a finished batch), and 'delivering' ones with nothing left whose run died
# before deciding the outcome. A batch already requested is skipped until that request goes stale.
DUE_BATCHES = """
WITH due AS (
    SELECT batch_id FROM batchman.requests
    WHERE state = 'openai_processed' AND next_attempt_at <= now() AND batch_id IS NOT NULL
    UNION
    SELECT batch_id FROM batchman.requests WHERE state = 'delivering' AND claimed_until < now()
), candidates AS (
    SELECT b.id FROM batchman.batches b
    WHERE (b.delivery_requested_at IS NULL
           OR b.delivery_requested_at < now() - make_interval(secs => %(stale_seconds)s))
      AND (b.state = 'ready_to_deliver'
           OR (b.state = ANY(%(states)s) AND b.id IN (SELECT batch_id FROM due))
           OR (b.state = 'delivering' AND NOT EXISTS (
                   SELECT 1 FROM batchman.requests r
                   WHERE r.batch_id = b.id AND r.state IN ('openai_processed', 'delivering'))))
    ORDER BY b.id
    LIMIT %(limit)s
    FOR UPDATE OF b SKIP LOCKED
)
UPDATE batchman.batches b
SET delivery_wave = b.delivery_wave + 1, delivery_requested_at = now()
FROM candidates c WHERE b.id = c.id
RETURNING b.id, b.delivery_wave
"""

RELEASE_BATCH = "UPDATE batchman.batches SET delivery_requested_at = NULL WHERE id = %s"

# A results run marks the first wave before it stores (the sensor skips a marked batch); only results
# runs act on a batch in these states, one at a time (the batch_id limit), so no staleness test.
RESERVE_DELIVERY = """
UPDATE batchman.batches SET delivery_wave = delivery_wave + 1, delivery_requested_at = now()
WHERE id = %s AND state IN ('openai_completed', 'downloading') RETURNING delivery_wave
"""

REDELIVER_REQUESTS = """
UPDATE batchman.requests
SET state = 'openai_processed', next_attempt_at = now(), claimed_until = NULL, delivery_retries = 0,
    updated_at = now()
WHERE batch_id = %s AND result IS NOT NULL AND state = ANY(%s)
"""


@dataclass(frozen=True)
class Outcome:
    """What to store for one attempt: the request's next state and, for a retry, the wait."""

    delivery: Delivery
    attempt: Attempt
    state: str
    delay: float | None = None


# --- used by the deliverer (async) ---------------------------------------------------------------


async def claim(
    conn: psycopg.AsyncConnection, batch_id: int, limit: int, lease_seconds: float
) -> list[Delivery]:
    """Claim up to ``limit`` due requests of the batch, in id order."""
    cur = await conn.execute(CLAIM, {"batch_id": batch_id, "limit": limit, "lease": lease_seconds})
    rows = await cur.fetchall()
    await conn.commit()
    rows.sort()  # RETURNING keeps no order
    # Requests mostly share a delivery_config: each distinct text is decoded once (the dicts are only read).
    configs: dict[str, Any] = {}
    deliveries = []
    for request_id, custom_id, config_text, body, failed, retries in rows:
        config = configs.get(config_text)
        if config is None:
            config = configs[config_text] = json.loads(config_text)
        deliveries.append(Delivery(request_id, custom_id, config, (body or "null").encode(), retries, failed))
    return deliveries


def _row(o: Outcome) -> list[Any]:
    a, error = o.attempt, o.attempt.error
    if error is not None:  # Postgres text holds neither NUL nor a lone surrogate
        error = error.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
    at = a.attempted_at.isoformat()
    return [o.delivery.request_id, o.state, o.delay, a.outcome, a.http_status, a.duration_ms, error, at]


async def record(conn: psycopg.AsyncConnection, outcomes: Sequence[Outcome]) -> None:
    """Every attempt row and every request's new state, in one statement (one transaction)."""
    if outcomes:
        async with conn.transaction():
            await conn.execute(RECORD, (json.dumps([_row(o) for o in outcomes]),))


def outcome_state(counts: dict[str, int]) -> str | None:
    """The batch outcome (as the Elixir service decides it), or None while requests are in delivery."""
    if counts["open"]:
        return None
    if counts["failed"] == 0:
        return "delivered"  # also for a batch with nothing to deliver
    return "partially_delivered" if counts["delivered"] else "delivery_failed"


async def finish_batch(conn: psycopg.AsyncConnection, batch_id: int) -> str | None:
    """Move a 'delivering' batch to its outcome when nothing is left to deliver; the new state or None."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(COUNT_BATCH_REQUESTS, (batch_id,))
    counts = await cur.fetchone()
    assert counts is not None
    target = outcome_state(counts)
    if target is not None:
        reason = f"{counts['delivered']} delivered, {counts['failed']} delivery failed"
        await cur.execute(
            TRANSITION,
            _moved(batch_id, ["delivering"], target, reason),
        )
        target = target if await cur.fetchone() else None
    await conn.commit()
    return target


async def redeliver_batch(conn: psycopg.AsyncConnection, batch_id: int, only: str) -> dict[str, Any] | None:
    """Make a batch's stored results due again (``only``: failed | all) and reopen the batch.

    None when the batch does not exist. ``requeued`` is 0 when nothing matched (or the batch is not
    in a delivery state; ``state`` tells which).
    """
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(GET_BATCH + " FOR UPDATE", (batch_id,))
    batch = await cur.fetchone()
    if batch is None:
        await conn.rollback()
        return None
    requeued = 0
    if batch["state"] in DELIVERABLE:
        await cur.execute(REDELIVER_REQUESTS, (batch_id, list(REDELIVER_BATCH_REQUESTS[only])))
        requeued = cur.rowcount
    state = batch["state"]
    if requeued and state in FINISHED_DELIVERY:
        await cur.execute(
            TRANSITION,
            _moved(batch_id, FINISHED_DELIVERY, "delivering", f"redeliver only={only}: {requeued} requests"),
        )
        state = "delivering"
    await conn.commit()
    return {"batch_id": batch_id, "only": only, "requeued": requeued, "state": state}


# --- used by the Dagster job and sensor (sync) ---------------------------------------------------


def begin_delivery(conn: psycopg.Connection, batch_id: int, reason: str) -> str | None:
    """Move the batch to 'delivering' (from ready_to_deliver or a finished delivery state); returns
    the batch state when delivery may go on, None when the batch is gone or in another state."""
    conn.execute(
        TRANSITION,
        _moved(batch_id, ["ready_to_deliver", *FINISHED_DELIVERY], "delivering", reason),
    )
    row = conn.execute(GET_BATCH, (batch_id,)).fetchone()
    conn.commit()
    if row is None:
        return None
    state = row["state"] if isinstance(row, dict) else row[1]
    return state if state == "delivering" else None


def due_batches(conn: psycopg.Connection, limit: int, stale_seconds: float) -> list[tuple[int, int]]:
    """(batch id, wave) for batches that need a delivery run now, marked as requested."""
    rows = conn.execute(
        DUE_BATCHES,
        {"limit": limit, "stale_seconds": stale_seconds, "states": list(DELIVERABLE[1:])},
    ).fetchall()
    conn.commit()
    return sorted((r["id"], r["delivery_wave"]) if isinstance(r, dict) else (r[0], r[1]) for r in rows)


def reserve_delivery(conn: psycopg.Connection, batch_id: int) -> bool:
    """Marks the delivery of a batch whose results are being stored as requested (see RESERVE_DELIVERY)."""
    row = conn.execute(RESERVE_DELIVERY, (batch_id,)).fetchone()
    conn.commit()
    return row is not None


def release_batch(conn: psycopg.Connection, batch_id: int) -> None:
    conn.execute(RELEASE_BATCH, (batch_id,))
    conn.commit()
