"""The figures behind Dagster's asset checks and stage reports, and the alert rows.

Read-only except ``record_alert``: each check is one indexed query per batch (``requests_batch_idx``,
``requests_claimed_idx``), cheap enough to run after every stage run and on every alert-sensor tick.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

# How a batch's requests stand after its results run: still waiting for a line (must be 0 once the
# results are stored), and settled (a result or an error line, delivered or not). Resubmitted ones
# left the batch (batch_id NULL) and are counted on the batch row (resubmitted_count).
REQUEST_ACCOUNTING = """
SELECT b.id, b.state, b.request_count, b.resubmitted_count, b.openai_total, b.openai_status,
       count(r.id) FILTER (WHERE r.state IN ('pending', 'openai_processing')) AS unresolved,
       count(r.id) FILTER (WHERE r.state NOT IN ('pending', 'openai_processing')) AS settled
FROM batchman.batches b
LEFT JOIN batchman.requests r ON r.batch_id = b.id
WHERE b.id = %s
GROUP BY b.id
"""

# Requests of one batch whose delivery claim ran out (the run that claimed them died).
STUCK_DELIVERING = """
SELECT count(*) AS stuck, min(claimed_until) AS oldest_claim
FROM batchman.requests
WHERE batch_id = %s AND state = 'delivering' AND claimed_until < now() - make_interval(secs => %s)
"""

# Batches holding such requests, for the alert sensor (walks the partial index on claimed_until).
BATCHES_STUCK_DELIVERING = """
SELECT batch_id, count(*) AS stuck
FROM batchman.requests
WHERE state = 'delivering' AND claimed_until < now() - make_interval(secs => %s) AND batch_id IS NOT NULL
GROUP BY batch_id
ORDER BY batch_id
LIMIT %s
"""

# What a stage's materialization shows: the batch row, and per-state counts of its requests.
FIGURES_OF_A_BATCH = "SELECT * FROM batchman.batches WHERE id = %s"
REQUEST_STATES = """
SELECT state, count(*) AS n FROM batchman.requests WHERE batch_id = %s GROUP BY state ORDER BY state
"""

# Seconds the batch spent between two of its transitions (first entry of each state).
STAGE_SECONDS = """
SELECT extract(epoch FROM
    min(transitioned_at) FILTER (WHERE to_state = %(to)s)
    - min(transitioned_at) FILTER (WHERE to_state = %(from)s)
) AS seconds
FROM batchman.batch_transitions
WHERE batch_id = %(id)s
"""

# Transitions into states an operator must hear about, after the alert sensor's cursor (not the
# alert rows themselves, whose state does not change).
ALERTING_TRANSITIONS = """
SELECT id, batch_id, from_state, to_state, reason, transitioned_at
FROM batchman.batch_transitions
WHERE id > %s AND to_state = ANY(%s) AND from_state IS DISTINCT FROM to_state
ORDER BY id
LIMIT %s
"""
LAST_TRANSITION_ID = "SELECT coalesce(max(id), 0) AS id FROM batchman.batch_transitions"

# An alert is an audit row in the batch's history: the state stays what it is (from = to), the reason
# says what went wrong. Nothing is written when the batch is gone.
RECORD_ALERT = """
INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason)
SELECT id, state, state, %s FROM batchman.batches WHERE id = %s
"""


def request_accounting(conn: psycopg.Connection, batch_id: int) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(REQUEST_ACCOUNTING, (batch_id,)).fetchone()


def stuck_delivering(conn: psycopg.Connection, batch_id: int, grace_seconds: float) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(STUCK_DELIVERING, (batch_id, grace_seconds)).fetchone()


def batches_stuck_delivering(conn: psycopg.Connection, grace_seconds: float, limit: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(BATCHES_STUCK_DELIVERING, (grace_seconds, limit)).fetchall()


def batch_figures(conn: psycopg.Connection, batch_id: int) -> tuple[dict[str, Any] | None, dict[str, int]]:
    """The batch row and ``{request state: count}`` of its requests."""
    with conn.cursor(row_factory=dict_row) as cur:
        batch = cur.execute(FIGURES_OF_A_BATCH, (batch_id,)).fetchone()
        states = {r["state"]: r["n"] for r in cur.execute(REQUEST_STATES, (batch_id,)).fetchall()}
    return batch, states


def stage_seconds(conn: psycopg.Connection, batch_id: int, from_state: str, to_state: str) -> float | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(STAGE_SECONDS, {"id": batch_id, "from": from_state, "to": to_state}).fetchone()
    return None if row is None or row["seconds"] is None else float(row["seconds"])


def alerting_transitions(
    conn: psycopg.Connection, after_id: int, states: list[str], limit: int
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(ALERTING_TRANSITIONS, (after_id, states, limit)).fetchall()


def last_transition_id(conn: psycopg.Connection) -> int:
    with conn.cursor(row_factory=dict_row) as cur:
        return int(cur.execute(LAST_TRANSITION_ID).fetchone()["id"])


def record_alert(conn: psycopg.Connection, batch_id: int, reason: str) -> bool:
    """Add the alert to the batch's history (caller commits); False when the batch no longer exists."""
    return conn.execute(RECORD_ALERT, (reason, batch_id)).rowcount == 1
