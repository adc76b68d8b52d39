"""The delivery claim and record statements against a real Postgres (store/deliveries.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from batch_pipeline.store import deliveries as store
from batch_pipeline.store.records import Attempt


def seed(db_url: str, n: int, config: dict | None = None) -> tuple[int, list[int]]:
    """A delivering batch whose ``n`` requests hold results due now."""
    config = config or {"type": "webhook", "webhook_url": "https://hooks.example.com/r"}
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state)"
            " VALUES ('/v1/responses', 'm', 'delivering') RETURNING id"
        ).fetchone()[0]
        ids = [
            conn.execute(
                """INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,
                       estimated_tokens, delivery_config, state, batch_id, result, next_attempt_at)
                   VALUES (%s, '/v1/responses', 'm', '{}', 2, 1, %s, 'openai_processed', %s, %s, now())
                   RETURNING id""",
                (f"b{batch_id}-{i}", Jsonb(config), batch_id, Jsonb({"custom_id": f"b{batch_id}-{i}"})),
            ).fetchone()[0]
            for i in range(n)
        ]
    return batch_id, ids


async def claim(db_url: str, batch_id: int, limit: int) -> list:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        return await store.claim(conn, batch_id, limit, 900)


async def record(db_url: str, outcomes: list[store.Outcome]) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await store.record(conn, outcomes)


def test_claims_due_rows_in_id_order_skipping_live_claims_and_locked_rows(db_url: str) -> None:
    batch_id, ids = seed(db_url, 6)
    first = asyncio.run(claim(db_url, batch_id, 2))
    assert [d.request_id for d in first] == ids[:2]
    assert json.loads(first[0].body) == {"custom_id": f"b{batch_id}-0"}
    assert first[0].delivery_config == {"type": "webhook", "webhook_url": "https://hooks.example.com/r"}
    # Another run holds a lock on the next row: it is skipped, not waited for.
    with psycopg.connect(db_url) as other:
        other.execute("SELECT 1 FROM batchman.requests WHERE id = %s FOR UPDATE", (ids[2],))
        second = asyncio.run(claim(db_url, batch_id, 2))
    assert [d.request_id for d in second] == ids[3:5]
    # A claim whose lease ran out is due again, in id order with the fresh ones.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET claimed_until = now() - interval '1 second' WHERE id = %s",
            (ids[0],),
        )
    third = asyncio.run(claim(db_url, batch_id, 10))
    assert [d.request_id for d in third] == [ids[0], ids[2], ids[5]]
    assert asyncio.run(claim(db_url, batch_id, 10)) == []


def test_records_one_attempt_per_outcome_and_moves_only_rows_still_claimed(db_url: str) -> None:
    config = {"type": "webhook", "webhook_url": "https://hooks.example.com/r", "headers": {"X-Api-Key": "k"}}
    batch_id, ids = seed(db_url, 3, config)
    ds = asyncio.run(claim(db_url, batch_id, 3))
    with psycopg.connect(db_url) as conn:  # a cancel in between wins over the run's outcome
        conn.execute("UPDATE batchman.requests SET state = 'cancelled' WHERE id = %s", (ids[2],))
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    outcomes = [
        store.Outcome(
            ds[0], Attempt("success", http_status=200, duration_ms=7, attempted_at=at), "delivered"
        ),
        store.Outcome(
            ds[1],
            Attempt("http_status_not_2xx", True, 503, "busy\x00 \ud800", attempted_at=at),
            "openai_processed",
            60.0,
        ),
        store.Outcome(ds[2], Attempt("success", http_status=200, attempted_at=at), "delivered"),
    ]
    asyncio.run(record(db_url, outcomes))
    with psycopg.connect(db_url) as conn:
        requests = conn.execute(
            "SELECT state, delivery_retries, delivery_attempt_count, claimed_until IS NULL,"
            " next_attempt_at > now() + interval '50 seconds'"
            " FROM batchman.requests WHERE batch_id = %s ORDER BY id",
            (batch_id,),
        ).fetchall()
        attempts = conn.execute(
            "SELECT request_id, delivery_config, outcome, http_status, duration_ms, error_msg, attempted_at"
            " FROM batchman.delivery_attempts ORDER BY request_id"
        ).fetchall()
    assert requests == [
        ("delivered", 0, 1, True, False),
        ("openai_processed", 1, 1, True, True),
        ("cancelled", 0, 0, False, False),
    ]
    snapshot = {"type": "webhook", "webhook_url": "https://hooks.example.com/r"}  # no credential headers
    assert attempts == [
        (ids[0], snapshot, "success", 200, 7, None, at),
        (ids[1], snapshot, "http_status_not_2xx", 503, 0, "busy\ufffd ?", at),
        (ids[2], snapshot, "success", 200, 0, None, at),
    ]
