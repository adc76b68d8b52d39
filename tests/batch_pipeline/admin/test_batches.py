"""``batch_pipeline.admin.batches`` against a real Postgres: upload now, restart, delete, listing. The
HTTP side is tested in ``tests/intake_api/test_batches_api.py``; cancel in ``test_cancel.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from batch_pipeline.admin import batches as admin
from batch_pipeline.admin.errors import BatchNotFound, InvalidBatchState
from tests.batch_pipeline.admin.helpers import add_batch, add_requests, batch, query, run, transitions
from tests.conftest import make_settings

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
    with pytest.raises(InvalidBatchState, match="state ready"):
        run(db_url, lambda conn: admin.upload_waiting(conn, ready))
    with pytest.raises(BatchNotFound):
        run(db_url, lambda conn: admin.upload_waiting(conn, 999_999))


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
    with pytest.raises(InvalidBatchState, match="state resubmitted"):
        run(db_url, lambda conn: admin.restart_batch(conn, batch_id))
    with pytest.raises(BatchNotFound):
        run(db_url, lambda conn: admin.restart_batch(conn, 999_999))


def test_delete_only_finished_batches_and_their_requests_cascade(db_url: str) -> None:
    ids = add_requests(db_url, 2, state="delivered")
    finished = add_batch(db_url, "delivered", ids)
    running = add_batch(db_url, "openai_processing", add_requests(db_url, 1, state="openai_processing"))
    run(db_url, lambda conn: admin.delete_batch(conn, finished))
    assert batch(db_url, finished) is None
    assert query(db_url, "SELECT id FROM batchman.requests WHERE id = ANY(%s)", (ids,)) == []
    with pytest.raises(InvalidBatchState, match="state openai_processing"):
        run(db_url, lambda conn: admin.delete_batch(conn, running))
    with pytest.raises(BatchNotFound):
        run(db_url, lambda conn: admin.delete_batch(conn, finished))


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
