"""``store.transitions``: the conditional state change with its audit row, sync and async alike."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from batch_pipeline.store import transitions as sync_transitions
from batch_pipeline.store.transitions import FromNow, transition_async
from tests.batch_pipeline.admin.helpers import add_batch, run, transitions


def test_async_transition_matches_the_sync_one(db_url: str) -> None:
    a, b = add_batch(db_url, "uploaded"), add_batch(db_url, "uploaded")

    async def move(conn: psycopg.AsyncConnection) -> list:
        async with conn.transaction():
            moved = await transition_async(
                conn, a, ("uploaded",), "waiting_for_capacity", "full", capacity_wait_reason="x"
            )
            again = await transition_async(conn, a, ("uploaded",), "waiting_for_capacity", "full")
            same = await transition_async(conn, a, ("waiting_for_capacity",), "waiting_for_capacity", "touch")
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


def test_from_now_is_a_parameter_on_the_database_clock(db_url: str) -> None:
    batch_id = add_batch(db_url, "uploaded")
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        row = sync_transitions.transition(
            conn, batch_id, ("uploaded",), "waiting_for_capacity", "full", next_check_at=FromNow(minutes=2.5)
        )
        waited = conn.execute("SELECT %s::timestamptz - now() AS d", (row["next_check_at"],)).fetchone()["d"]
    assert 149 <= waited.total_seconds() <= 150
