"""The /metrics statements stay servable by their indexes (a scrape must not scan a million requests).

With a handful of rows the planner would rightly prefer a sequential scan; with it switched off, the
plan shows which index can serve each statement. Figures with a million rows: README, "Metrics".
"""

from __future__ import annotations

import psycopg
import pytest

from batch_pipeline.store import metrics as sql


@pytest.fixture
def db_url(fresh_db_url: str) -> str:
    """Every test here reads a query plan: a database no earlier test left statistics in."""
    return fresh_db_url


def plan(db_url: str, query: str, params: dict | None = None) -> str:
    with psycopg.connect(db_url) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        rows = conn.execute("EXPLAIN (COSTS OFF) " + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_the_queue_is_an_index_only_scan_of_the_queued_index(db_url: str) -> None:
    text = plan(db_url, sql.QUEUE)
    assert "Index Only Scan using requests_queued_idx" in text, text


def test_the_backlog_reads_two_partial_indexes(db_url: str) -> None:
    text = plan(db_url, sql.BACKLOG_OF_DELIVERIES)
    # Either partial index of the results waiting for delivery (due, or deliverable by batch) will do.
    waiting = "requests_due_idx" in text or "requests_deliverable_idx" in text
    assert waiting and "requests_claimed_idx" in text, text
    assert "Seq Scan" not in text, text


@pytest.mark.parametrize(
    ("query", "index"),
    [(sql.DELIVERIES_BETWEEN, "delivery_attempts_pkey"), (sql.TRANSITIONS_BETWEEN, "batch_transitions_pkey")],
)
def test_counter_increments_read_an_id_range(db_url: str, query: str, index: str) -> None:
    params = {"after": 10, "upto": 20, "bounds": list(sql.LATENCY_BUCKETS_MS)}
    text = plan(db_url, query, params)
    assert f"Index Scan using {index}" in text, text
    assert "Index Cond: ((id > '10'::bigint) AND (id <= '20'::bigint))" in text, text


def test_the_newest_ids_come_from_the_primary_keys(db_url: str) -> None:
    text = plan(db_url, sql.MAX_IDS)
    assert "Index Only Scan Backward using delivery_attempts_pkey" in text, text
    assert "Index Only Scan Backward using batch_transitions_pkey" in text, text
