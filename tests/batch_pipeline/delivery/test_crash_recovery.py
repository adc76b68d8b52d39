"""A run that dies after claiming loses nothing: its claims come back when the lease runs out."""

from __future__ import annotations

import asyncio

import psycopg

from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.store import deliveries as store
from tests.batch_pipeline.delivery.conftest import options, requests_of, rows, seed_batch, webhook


async def _claim(db_url: str, batch_id: int, n: int, lease: float) -> list[int]:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        return [d.request_id for d in await store.claim(conn, batch_id, n, lease)]


def test_claims_of_a_crashed_run_are_delivered_after_the_lease(db_url, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, ids = seed_batch(db_url, [webhook(rx.url)] * 10)
    # The "crashed" run claimed four requests and died before sending or recording anything.
    crashed = asyncio.run(_claim(db_url, batch_id, 4, lease=600))
    assert crashed == ids[:4]

    # A second run must not touch live claims: two runs never send the same request at once.
    report = asyncio.run(deliver_batch(db_url, batch_id, options()))
    assert report.attempts == 6 and report.batch_state is None
    assert {r["id"] for r in requests_of(db_url, batch_id) if r["state"] == "delivering"} == set(crashed)

    # Time passes: the lease runs out (moved back rather than slept through).
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET claimed_until = now() - interval '1 second' WHERE id = ANY(%s)",
            (crashed,),
        )
    report = asyncio.run(deliver_batch(db_url, batch_id, options()))
    assert report.attempts == 4 and report.batch_state == "delivered"
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
    assert sorted(int(k) for k in rx.hits) == ids  # every result arrived exactly once here
    assert rows(db_url, "SELECT count(*) AS n FROM batchman.delivery_attempts")[0]["n"] == 10


def test_concurrent_runs_split_the_work_without_double_sends(db_url, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, _ = seed_batch(db_url, [webhook(rx.url)] * 60)

    async def both():
        opts = options(claim_size=7)
        return await asyncio.gather(
            deliver_batch(db_url, batch_id, opts), deliver_batch(db_url, batch_id, opts)
        )

    first, second = asyncio.run(both())
    assert first.attempts + second.attempts == 60
    assert all(len(hits) == 1 for hits in rx.hits.values()) and len(rx.hits) == 60
