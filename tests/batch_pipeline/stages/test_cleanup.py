"""The cleanup stage's retention of OpenAI webhook ids and call figures, against a real Postgres.

Ages are set relative to the database's own ``now()``, so the test does not depend on the clocks of
this machine and the server agreeing.
"""

from __future__ import annotations

import psycopg

from batch_pipeline.db import connect
from batch_pipeline.stages.cleanup import delete_old_openai_calls, delete_old_webhook_events

# webhook id -> age when the cleanup runs. The 7-day boundary is OpenAI's redelivery window; the ages
# next to it keep an hour of margin either way, so the seconds between insert and delete cannot matter.
AGES = {
    "evt_month_old": "30 days",
    "evt_eight_days": "8 days",
    "evt_just_past_window": "7 days 1 hour",
    "evt_just_inside_window": "6 days 23 hours",
    "evt_yesterday": "1 day",
    "evt_now": "0 seconds",
}
EXPIRED = {"evt_month_old", "evt_eight_days", "evt_just_past_window"}


def _insert_events(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        for webhook_id, age in AGES.items():
            conn.execute(
                "INSERT INTO batchman.openai_webhook_events"
                " (webhook_id, event_type, openai_batch_id, received_at)"
                " VALUES (%s, 'batch.completed', 'batch_abc', now() - %s::interval)",
                (webhook_id, age),
            )


def _remaining(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT webhook_id FROM batchman.openai_webhook_events")}


def test_webhook_events_older_than_seven_days_are_deleted_and_younger_ones_kept(db_url) -> None:
    _insert_events(db_url)
    deleted = delete_old_webhook_events(lambda: connect(db_url))
    assert deleted == len(EXPIRED)
    # Read on a new connection: the deletion was committed, not left in an open transaction.
    assert _remaining(db_url) == set(AGES) - EXPIRED
    # A later run finds nothing more to delete (the kept ones are still inside the window).
    assert delete_old_webhook_events(lambda: connect(db_url)) == 0
    assert _remaining(db_url) == set(AGES) - EXPIRED


def test_openai_call_figures_older_than_seven_days_are_deleted_and_younger_ones_kept(db_url) -> None:
    with psycopg.connect(db_url) as conn:
        for age in AGES.values():
            conn.execute(
                "INSERT INTO batchman.openai_calls (flushed_at, operation, outcome, calls, seconds, buckets)"
                " VALUES (now() - %s::interval, 'batches.retrieve', 'ok', 1, 0.1, '{1}')",
                (age,),
            )
    assert delete_old_openai_calls(lambda: connect(db_url)) == len(EXPIRED)
    with psycopg.connect(db_url) as conn:
        kept = conn.execute("SELECT count(*) FROM batchman.openai_calls").fetchone()[0]
    assert kept == len(AGES) - len(EXPIRED)
    assert delete_old_openai_calls(lambda: connect(db_url)) == 0
