"""``batch_pipeline.admin.openai_events`` against a real Postgres: an event recorded once, its batch due
now. The signed HTTP side is tested in ``tests/intake_api/test_openai_webhook.py``.
"""

from __future__ import annotations

from batch_pipeline.admin import openai_events as admin
from tests.batch_pipeline.admin.helpers import add_batch, query, run

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
