"""What the database says after (and while) the soak runs: request states, delivery attempts, each
batch's timeline from its audit rows, and sizes. Read-only queries of the soak's own database."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import psycopg

FINISHED = ("delivered", "failed", "delivery_failed", "cancelled", "expired")

_STATES = "SELECT state, count(*) FROM batchman.requests GROUP BY state"
_ACCEPT_SPAN = (
    "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at)) FROM batchman.requests"
)
_ALL_IDS = "SELECT custom_id, state, resubmit_count FROM batchman.requests"
# Requests with more than one delivery attempt: the pipeline's own account of a repeated send.
_REPEATS = """
SELECT r.custom_id, count(*) AS attempts, count(*) FILTER (WHERE a.outcome = 'success') AS successes,
       string_agg(a.outcome, ',' ORDER BY a.id) AS outcomes
FROM batchman.delivery_attempts a JOIN batchman.requests r ON r.id = a.request_id
GROUP BY r.custom_id HAVING count(*) > 1
"""
_ATTEMPT_SPAN = """
SELECT a.delivery_config->>'type', count(*), extract(epoch FROM min(a.attempted_at)),
       extract(epoch FROM max(a.attempted_at))
FROM batchman.delivery_attempts a WHERE a.outcome = 'success' GROUP BY 1
"""
# The first time each batch entered each state.
_TIMELINE = """
SELECT b.id, b.request_count, b.openai_status, b.state, t.to_state, extract(epoch FROM min(t.transitioned_at))
FROM batchman.batches b JOIN batchman.batch_transitions t ON t.batch_id = b.id
GROUP BY b.id, b.request_count, b.openai_status, b.state, t.to_state
"""
_OPENED = "SELECT id, extract(epoch FROM created_at) FROM batchman.batches"
# The oldest request each batch holds (a resubmitted request counts in its latest batch only).
_OLDEST = """
SELECT batch_id, extract(epoch FROM min(created_at)) FROM batchman.requests
WHERE batch_id IS NOT NULL GROUP BY batch_id
"""
_SIZES = """
SELECT pg_database_size(current_database()),
       (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'batchman' AND c.relkind IN ('r', 'm'))
"""

# The stages of one batch, each from the first time it entered one state to the first time it entered
# the next; names as docs/benchmarks.md uses them.
STAGES = (
    ("batch age: oldest request to batch opened", "accepted", "opened"),
    ("run start (upload)", "opened", "uploading"),
    ("upload: JSONL + file", "uploading", "uploaded"),
    ("create at OpenAI", "uploaded", "openai_processing"),
    ("OpenAI (incl. polling)", "openai_processing", "openai_completed"),
    ("run start (results)", "openai_completed", "downloading"),
    ("results: store lines", "downloading", "ready_to_deliver"),
    ("run start (delivery)", "ready_to_deliver", "delivering"),
    ("delivery", "delivering", "settled"),
)
SETTLED = ("delivered", "partially_delivered", "delivery_failed")


def state_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(_STATES).fetchall())


def accept_span(dsn: str) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        first, last = conn.execute(_ACCEPT_SPAN).fetchone()
    return float(first or 0.0), float(last or 0.0)  # 0: nothing stored at all (check says so)


def stored_requests(dsn: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return {cid: (state, resubmits) for cid, state, resubmits in conn.execute(_ALL_IDS)}


def repeated_attempts(dsn: str) -> list[tuple[str, int, int, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(_REPEATS).fetchall()


def delivery_spans(dsn: str) -> dict[str, tuple[int, float, float]]:
    with psycopg.connect(dsn) as conn:
        return {kind: (n, float(a), float(b)) for kind, n, a, b in conn.execute(_ATTEMPT_SPAN)}


def sizes(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        total, ours = conn.execute(_SIZES).fetchone()
    return int(total), int(ours or 0)


@dataclass
class Batch:
    id: int
    requests: int
    openai_status: str | None
    state: str
    entered: dict[str, float]


def batches(dsn: str) -> list[Batch]:
    found: dict[int, Batch] = {}
    with psycopg.connect(dsn) as conn:
        for bid, count, status, state, to_state, at in conn.execute(_TIMELINE):
            b = found.setdefault(bid, Batch(bid, count, status, state, {}))
            b.entered[to_state] = float(at)
        for bid, opened in conn.execute(_OPENED):
            if bid in found:
                found[bid].entered["opened"] = float(opened)
        for bid, oldest in conn.execute(_OLDEST):
            if bid in found:
                found[bid].entered["accepted"] = float(oldest)
    for b in found.values():
        settled = [b.entered[s] for s in SETTLED if s in b.entered]
        if settled:
            b.entered["settled"] = min(settled)
    return sorted(found.values(), key=lambda b: b.id)


def stage_table(found: list[Batch]) -> list[tuple[str, float, float, int]]:
    """(stage, median s per batch, max s per batch, batches) over the batches that went through it."""
    rows = []
    for name, start, end in STAGES:
        spans = [b.entered[end] - b.entered[start] for b in found if start in b.entered and end in b.entered]
        if spans:
            rows.append((name, statistics.median(spans), max(spans), len(spans)))
    return rows


def first_and_last(found: list[Batch], state: str) -> tuple[float, float] | None:
    times = [b.entered[state] for b in found if state in b.entered]
    return (min(times), max(times)) if times else None
