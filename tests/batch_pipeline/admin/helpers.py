"""Test helpers for the admin service and the API's batch routes: rows seeded straight into Postgres.

Shared by ``tests/batch_pipeline/admin`` and ``tests/intake_api`` (batches, OpenAI webhook).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

T = TypeVar("T")


def run(db_url: str, action: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
    """Run ``action`` on a fresh async connection, like the API does with a pool connection."""

    async def main() -> T:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            return await action(conn)

    return asyncio.run(main())


def add_requests(
    db_url: str, count: int, model: str = "gpt-4o-mini", endpoint: str = "/v1/chat/completions", **cols: Any
) -> list[int]:
    """Queued requests (state pending, no batch) with realistic JSONL payloads."""
    ids = []
    with psycopg.connect(db_url) as conn:
        start = conn.execute("SELECT count(*) FROM batchman.requests").fetchone()[0]
        for i in range(start, start + count):
            line = json.dumps(
                {
                    "custom_id": f"r-{i}",
                    "method": "POST",
                    "url": endpoint,
                    "body": {"model": model, "messages": [{"role": "user", "content": f"Q{i}"}]},
                }
            )
            row = conn.execute(
                "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
                " estimated_tokens, delivery_config) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    f"r-{i}",
                    endpoint,
                    model,
                    line,
                    len(line),
                    10,
                    Jsonb({"type": "webhook", "webhook_url": "http://x/"}),
                ),
            ).fetchone()
            ids.append(row[0])
        if cols:
            sets = ", ".join(f"{k} = %s" for k in cols)
            conn.execute(f"UPDATE batchman.requests SET {sets} WHERE id = ANY(%s)", (*cols.values(), ids))
    return ids


def add_batch(db_url: str, state: str, request_ids: list[int] = (), **cols: Any) -> int:
    names = ["endpoint", "model", "state", "request_count", *cols]
    values = ["/v1/chat/completions", "gpt-4o-mini", state, len(request_ids), *cols.values()]
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            f"INSERT INTO batchman.batches ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
            " RETURNING id",
            values,
        ).fetchone()[0]
        conn.execute(
            "UPDATE batchman.requests SET batch_id = %s WHERE id = ANY(%s)", (batch_id, list(request_ids))
        )
    return batch_id


def query(db_url: str, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def batch(db_url: str, batch_id: int) -> dict[str, Any] | None:
    rows = query(db_url, "SELECT * FROM batchman.batches WHERE id = %s", (batch_id,))
    return rows[0] if rows else None


def transitions(db_url: str, batch_id: int) -> list[tuple]:
    rows = query(
        db_url,
        "SELECT from_state, to_state, reason FROM batchman.batch_transitions WHERE batch_id = %s ORDER BY id",
        (batch_id,),
    )
    return [(r["from_state"], r["to_state"], r["reason"]) for r in rows]
