"""The results stage against a real Postgres: line classification, and storing awkward result files."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from batch_pipeline.db import connect
from batch_pipeline.intake.validation import Limits, validate_request
from batch_pipeline.stages.results import _store, classify
from batch_pipeline.store.request_inserts import COPY_REQUESTS, copy_row


def line(custom_id: str, status: int = 200, error: dict | None = None, content: str = "ok") -> dict:
    body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    response = None if error else {"status_code": status, "request_id": "req_1", "body": body}
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": error}


@pytest.mark.parametrize(
    ("entry", "expired", "kind"),
    [
        (line("a"), False, "ok"),
        (line("a", status=400), False, "failed"),
        (line("a", status=500), False, "retry"),
        (line("a", error={"code": "request_timeout", "message": "slow"}), False, "retry"),
        (line("a", error={"code": "batch_expired", "message": "late"}), False, "retry"),
        (line("a", error={"code": "batch_cancelled", "message": "x"}), True, "retry"),
        (line("a", error={"code": "batch_cancelled", "message": "x"}), False, "failed"),
        (line("a", error={"code": "invalid_request", "message": "bad"}), False, "failed"),
    ],
)
def test_classify(entry: dict, expired: bool, kind: str) -> None:
    assert classify(entry, expired)[0] == kind


def _batch_in_flight(db_url: str, custom_ids: list[str]) -> dict:
    """A batch whose requests OpenAI has finished, as the status sensor leaves it."""
    with connect(db_url) as conn:
        batch = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state, openai_status, request_count)"
            " VALUES ('/v1/chat/completions', 'gpt-4o-mini', 'downloading', 'completed', %s) RETURNING *",
            (len(custom_ids),),
        ).fetchone()
        rows = [
            validate_request(
                {
                    "custom_id": cid,
                    "url": "/v1/chat/completions",
                    "method": "POST",
                    "body": {"model": "gpt-4o-mini", "messages": []},
                    "delivery_config": {"type": "webhook", "webhook_url": "https://example.com/h"},
                },
                Limits(),
            )
            for cid in custom_ids
        ]
        with conn.cursor().copy(COPY_REQUESTS) as copy:
            for r in rows:
                copy.write_row(copy_row(r))
        conn.execute(
            "UPDATE batchman.requests SET state = 'openai_processing', batch_id = %s", (batch["id"],)
        )
        conn.commit()
    return batch


def test_store_keeps_lines_postgres_jsonb_would_refuse(db_url: str, tmp_path: Path) -> None:
    batch = _batch_in_flight(db_url, ["nul", "plain", "unanswered"])
    out = tmp_path / "out.jsonl"
    out.write_text(
        json.dumps(line("nul", content="a\u0000b"))
        + "\n"  # json.dumps writes the \u0000 escape
        + "{not json\n"
        + "\n"
        + json.dumps(line("plain"))
        + "\n"
    )
    summary = _store(lambda: connect(db_url), batch, [out], max_resubmits=1)

    assert summary == {"outcome": "stored", "processed": 2, "resubmitted": 1}
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT custom_id, result FROM batchman.requests").fetchall())
        states = dict(conn.execute("SELECT custom_id, state FROM batchman.requests").fetchall())
    assert rows["nul"]["response"]["body"]["choices"][0]["message"]["content"] == "a\ufffdb"
    assert rows["plain"]["response"]["status_code"] == 200
    # No line came back for it (the malformed one is skipped): it goes into a new batch.
    assert states == {"nul": "openai_processed", "plain": "openai_processed", "unanswered": "pending"}


def test_store_twice_changes_nothing(db_url: str, tmp_path: Path) -> None:
    batch = _batch_in_flight(db_url, ["x"])
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(line("x")) + "\n")
    _store(lambda: connect(db_url), batch, [out], max_resubmits=1)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE batchman.batches SET state = 'downloading'")  # as a re-run would find it
        before = conn.execute("SELECT state, result, updated_at FROM batchman.requests").fetchall()
    summary = _store(lambda: connect(db_url), batch, [out], max_resubmits=1)
    with psycopg.connect(db_url) as conn:
        after = conn.execute("SELECT state, result, updated_at FROM batchman.requests").fetchall()
    assert summary["processed"] == 0 and before == after
