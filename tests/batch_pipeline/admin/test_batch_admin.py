"""``batch_pipeline.batch_admin`` against a real Postgres: the async transition twin, upload now, restart,
delete and the OpenAI webhook hint. The HTTP side (and cancel against the simulator) is tested in
``tests/intake_api/test_batches_api.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from batch_pipeline import batch_admin as admin
from batch_pipeline.store import transitions as sync_transitions
from tests.conftest import make_settings

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


# --- transition twin -----------------------------------------------------------------------------------


def test_async_transition_matches_the_sync_one(db_url: str) -> None:
    a, b = add_batch(db_url, "uploaded"), add_batch(db_url, "uploaded")

    async def move(conn: psycopg.AsyncConnection) -> list:
        async with conn.transaction():
            moved = await admin.transition(
                conn, a, ("uploaded",), "waiting_for_capacity", "full", capacity_wait_reason="x"
            )
            again = await admin.transition(conn, a, ("uploaded",), "waiting_for_capacity", "full")
            same = await admin.transition(conn, a, ("waiting_for_capacity",), "waiting_for_capacity", "touch")
        return [moved, again, same]

    moved, again, same = run(db_url, move)
    assert moved["state"] == "waiting_for_capacity" and moved["previous_state"] == "uploaded"
    assert moved["capacity_wait_reason"] == "x"
    assert again is None  # conditional: the batch is no longer 'uploaded'
    assert same is not None  # a same-state update is allowed but records no transition
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        sync_transitions.transition(
            conn, b, ("uploaded",), "waiting_for_capacity", "full", capacity_wait_reason="x"
        )
    assert transitions(db_url, a) == transitions(db_url, b) == [("uploaded", "waiting_for_capacity", "full")]


# --- upload now ----------------------------------------------------------------------------------------


def test_upload_queued_cuts_every_matching_group_until_empty(tmp_path: Path, db_url: str) -> None:
    mini = add_requests(db_url, 5)
    other = add_requests(db_url, 2, model="gpt-4.1")
    embed = add_requests(db_url, 1, model="text-embedding-3-small", endpoint="/v1/embeddings")
    settings = make_settings(tmp_path, database_url=db_url, batch_max_requests=2)

    cut = asyncio.run(admin.upload_queued(db_url, settings, model="gpt-4o-mini"))
    # 5 requests, at most 2 per batch: three batches, all of them now.
    assert [c["request_count"] for c in cut] == [2, 2, 1]
    assert {(c["endpoint"], c["model"]) for c in cut} == {("/v1/chat/completions", "gpt-4o-mini")}
    rows = query(db_url, "SELECT id, batch_id FROM batchman.requests ORDER BY id")
    by_id = {r["id"]: r["batch_id"] for r in rows}
    assert [by_id[i] for i in mini] == [cut[0]["id"]] * 2 + [cut[1]["id"]] * 2 + [cut[2]["id"]]
    assert all(by_id[i] is None for i in other + embed)
    for c in cut:
        assert batch(db_url, c["id"])["state"] == "ready"
        assert transitions(db_url, c["id"]) == [(None, "ready", admin.UPLOAD_REASON)]

    cut = asyncio.run(admin.upload_queued(db_url, settings, endpoint="/v1/embeddings"))
    assert [(c["model"], c["request_count"]) for c in cut] == [("text-embedding-3-small", 1)]
    cut = asyncio.run(admin.upload_queued(db_url, settings))
    assert [(c["model"], c["request_count"]) for c in cut] == [("gpt-4.1", 2)]
    assert asyncio.run(admin.upload_queued(db_url, settings)) == []


def test_upload_queued_respects_the_model_token_override(tmp_path: Path, db_url: str) -> None:
    add_requests(db_url, 4)  # 10 estimated tokens each
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO batchman.model_limits (model_prefix, token_limit) VALUES ('gpt-4o-mini', 25)"
        )
    cut = asyncio.run(admin.upload_queued(db_url, make_settings(tmp_path, database_url=db_url)))
    assert [(c["request_count"], c["estimated_tokens"]) for c in cut] == [(2, 20), (2, 20)]


def test_upload_waiting_makes_the_capacity_check_due(db_url: str) -> None:
    waiting = add_batch(db_url, "waiting_for_capacity", next_check_at="2999-01-01T00:00:00Z")
    row = run(db_url, lambda conn: admin.upload_waiting(conn, waiting))
    assert row["state"] == "waiting_for_capacity"
    assert query(db_url, "SELECT next_check_at <= now() AS due FROM batchman.batches")[0]["due"]
    ready = add_batch(db_url, "ready")
    with pytest.raises(admin.InvalidBatchState, match="state ready"):
        run(db_url, lambda conn: admin.upload_waiting(conn, ready))
    with pytest.raises(admin.BatchNotFound):
        run(db_url, lambda conn: admin.upload_waiting(conn, 999_999))


# --- cancel (no OpenAI involved) ----------------------------------------------------------------------


def test_cancel_before_openai_cancels_the_requests_too(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, database_url=db_url)
    ids = add_requests(db_url, 3)
    done = add_requests(db_url, 1, state="delivered")
    batch_id = add_batch(db_url, "waiting_for_capacity", ids + done)
    result = run(db_url, lambda conn: admin.cancel_batch(conn, settings, batch_id))
    assert result == {
        "id": batch_id,
        "state": "cancelled",
        "previous_state": "waiting_for_capacity",
        "cancelled_requests": 3,
    }
    states = query(db_url, "SELECT id, state FROM batchman.requests ORDER BY id")
    assert [r["state"] for r in states] == ["cancelled"] * 3 + ["delivered"]
    assert batch(db_url, batch_id)["completed_at"] is not None
    assert transitions(db_url, batch_id) == [
        ("waiting_for_capacity", "cancelled", "cancelled through the API")
    ]
    with pytest.raises(admin.InvalidBatchState, match="state cancelled"):
        run(db_url, lambda conn: admin.cancel_batch(conn, settings, batch_id))


# --- restart and delete -------------------------------------------------------------------------------


def test_restart_requeues_only_what_no_client_received(db_url: str) -> None:
    result_line = Jsonb({"id": "batch_req_1", "custom_id": "x", "response": None, "error": {"code": "e"}})
    requeued = [
        *add_requests(db_url, 1, state="pending"),
        *add_requests(db_url, 1, state="openai_processing"),
        *add_requests(db_url, 1, state="failed", error_msg="Batch failed"),
        *add_requests(db_url, 1, state="openai_processed", result=result_line, next_attempt_at="2000-01-01"),
    ]
    kept = [
        *add_requests(db_url, 1, state="delivered", result=result_line),
        *add_requests(db_url, 1, state="failed", result=result_line, error_msg="server_error"),
        *add_requests(db_url, 1, state="delivery_failed", result=result_line),
        *add_requests(db_url, 1, state="cancelled"),
    ]
    batch_id = add_batch(db_url, "failed", requeued + kept, error_msg="validation failed")

    result = run(db_url, lambda conn: admin.restart_batch(conn, batch_id))
    assert result == {
        "id": batch_id,
        "state": "resubmitted",
        "previous_state": "failed",
        "requeued_requests": 4,
    }
    rows = {r["id"]: r for r in query(db_url, "SELECT * FROM batchman.requests")}
    for i in requeued:
        r = rows[i]
        assert (r["state"], r["batch_id"], r["result"], r["error_msg"], r["next_attempt_at"]) == (
            "pending", None, None, None, None
        )  # fmt: skip
    assert [rows[i]["state"] for i in kept] == ["delivered", "failed", "delivery_failed", "cancelled"]
    assert all(rows[i]["batch_id"] == batch_id for i in kept)
    b = batch(db_url, batch_id)
    assert (b["state"], b["resubmitted_count"], b["error_msg"]) == ("resubmitted", 4, "validation failed")
    assert transitions(db_url, batch_id) == [
        ("failed", "resubmitted", "restarted through the API: 4 requests back in the queue")
    ]
    with pytest.raises(admin.InvalidBatchState, match="state resubmitted"):
        run(db_url, lambda conn: admin.restart_batch(conn, batch_id))
    with pytest.raises(admin.BatchNotFound):
        run(db_url, lambda conn: admin.restart_batch(conn, 999_999))


def test_delete_only_finished_batches_and_their_requests_cascade(db_url: str) -> None:
    ids = add_requests(db_url, 2, state="delivered")
    finished = add_batch(db_url, "delivered", ids)
    running = add_batch(db_url, "openai_processing", add_requests(db_url, 1, state="openai_processing"))
    run(db_url, lambda conn: admin.delete_batch(conn, finished))
    assert batch(db_url, finished) is None
    assert query(db_url, "SELECT id FROM batchman.requests WHERE id = ANY(%s)", (ids,)) == []
    with pytest.raises(admin.InvalidBatchState, match="state openai_processing"):
        run(db_url, lambda conn: admin.delete_batch(conn, running))
    with pytest.raises(admin.BatchNotFound):
        run(db_url, lambda conn: admin.delete_batch(conn, finished))


# --- OpenAI webhook hint ------------------------------------------------------------------------------


def test_openai_event_makes_the_batch_due_once(db_url: str) -> None:
    at_openai = add_batch(db_url, "openai_processing", openai_batch_id="batch_a", next_check_at="2999-01-01")
    finished = add_batch(db_url, "delivered", openai_batch_id="batch_b", next_check_at="2999-01-01")

    assert run(db_url, lambda c: admin.record_openai_event(c, "evt-1", "batch.completed", "batch_a")) == (
        True,
        at_openai,
    )
    assert run(db_url, lambda c: admin.record_openai_event(c, "evt-1", "batch.completed", "batch_a")) == (
        False,
        None,
    )
    # A finished batch is left alone; other event types are recorded only.
    assert run(db_url, lambda c: admin.record_openai_event(c, "evt-2", "batch.failed", "batch_b")) == (
        True,
        None,
    )
    assert run(db_url, lambda c: admin.record_openai_event(c, "evt-3", "response.completed", "resp_1")) == (
        True,
        None,
    )
    due = {
        r["id"]: r["due"]
        for r in query(db_url, "SELECT id, next_check_at <= now() AS due FROM batchman.batches")
    }
    assert due == {at_openai: True, finished: False}
    events = query(
        db_url,
        "SELECT webhook_id, event_type, openai_batch_id FROM batchman.openai_webhook_events ORDER BY 1",
    )
    assert [tuple(e.values()) for e in events] == [
        ("evt-1", "batch.completed", "batch_a"),
        ("evt-2", "batch.failed", "batch_b"),
        ("evt-3", "response.completed", "resp_1"),
    ]


# --- listing ------------------------------------------------------------------------------------------


def test_list_filters_and_keyset_pages(db_url: str) -> None:
    ids = [add_batch(db_url, "delivered" if i % 2 else "ready") for i in range(5)]
    page = run(db_url, lambda c: admin.list_batches(c, admin.BatchFilter(), 2, None))
    assert [r["id"] for r in page] == ids[::-1][:2]
    page = run(db_url, lambda c: admin.list_batches(c, admin.BatchFilter(), 2, page[-1]["id"]))
    assert [r["id"] for r in page] == ids[::-1][2:4]
    ready = run(db_url, lambda c: admin.list_batches(c, admin.BatchFilter(state="ready"), 10, None))
    assert [r["id"] for r in ready] == [ids[4], ids[2], ids[0]]
    none = run(
        db_url,
        lambda c: admin.list_batches(c, admin.BatchFilter(model="gpt-5", endpoint="/v1/responses"), 10, None),
    )
    assert none == []
