"""A run that dies after claiming loses nothing: its claims come back when the lease runs out.

``test_a_killed_delivery_process_loses_nothing`` really kills one: a delivery run in a subprocess,
SIGKILLed while some of its webhooks hang.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.store import deliveries as store
from tests.batch_pipeline.delivery.conftest import (
    attempts_of,
    body_json,
    ok,
    options,
    requests_of,
    result_line,
    rows,
    seed_batch,
    webhook,
)

REPO = Path(__file__).resolve().parents[3]

# A delivery run as the Dagster job would start it, in its own process: chunks of 10, 10 sends in
# flight, a read timeout far longer than the test so a hanging receiver holds the run where it is.
CHILD = """
import asyncio, sys
from batch_pipeline.delivery.deliverer import DeliveryOptions, deliver_batch
from batch_pipeline.url_policy import EgressPolicy
from batch_pipeline.delivery.webhook import WebhookOptions

hook = WebhookOptions(connect_timeout=5, read_timeout=3600, concurrency=10, policy=EgressPolicy(False))
opts = DeliveryOptions(webhook=hook, schedule=(0.0,), jitter=0.0, claim_size=10, lease_seconds=900)
asyncio.run(deliver_batch(sys.argv[1], int(sys.argv[2]), opts))
"""


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for a state the test caused (not for time to pass); fail loudly on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def states(db_url: str, batch_id: int) -> dict[int, str]:
    return {r["id"]: r["state"] for r in requests_of(db_url, batch_id)}


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


def test_a_killed_delivery_process_loses_nothing(db_url, receiver_factory) -> None:
    hanging: set[str] = set()  # request ids the receiver never answers while the first run is alive
    rx = receiver_factory(
        lambda _seen, req: "hang" if req.headers["x-batcher-request-id"] in hanging else (200, {})
    )
    rx.hang_seconds = 3600
    batch_id, ids = seed_batch(db_url, [webhook(rx.url)] * 30)
    hanging.update({str(ids[12]), str(ids[15])})  # two of the second chunk of ten

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(batch_id)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        # Chunk 1 answered and recorded; chunk 2 sent (two of its webhooks hang, so nothing of it is
        # recorded); chunk 3 claimed behind it. Then the process dies without any cleanup.
        def stuck_mid_run() -> bool:
            st = list(states(db_url, batch_id).values())
            return (
                st.count("delivered") == 10
                and st.count("delivering") == 20
                and all(rx.hits.get(r) for r in hanging)
            )

        wait_for(stuck_mid_run)
        assert proc.poll() is None, "the delivery process ended on its own"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

    at_kill = states(db_url, batch_id)
    claimed = [rid for rid in ids if at_kill[rid] == "delivering"]
    assert len(claimed) == 20 and claimed == ids[10:]
    hits_at_kill = {rid: len(rx.hits.get(str(rid), [])) for rid in ids}
    assert all(hits_at_kill[rid] == 1 for rid in ids[:20])  # the dead run sent chunks 1 and 2
    assert rows(db_url, "SELECT count(*) AS n FROM batchman.delivery_attempts")[0]["n"] == 10

    # Its claims are live until the lease ends: a new run leaves them alone.
    report = asyncio.run(deliver_batch(db_url, batch_id, options()))
    assert report.attempts == 0 and report.batch_state is None

    # The lease runs out (moved back rather than slept through), the receiver is healthy again.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET claimed_until = now() - interval '1 second'"
            " WHERE batch_id = %s AND state = 'delivering'",
            (batch_id,),
        )
    rx.behave = ok
    report = asyncio.run(deliver_batch(db_url, batch_id, options()))
    assert report.attempts == 20 and report.batch_state == "delivered"
    assert set(states(db_url, batch_id).values()) == {"delivered"}

    # Nothing lost: one recorded success per request; each claimed request sent once more, carrying
    # the same idempotency key and the same bytes as any earlier send.
    for i, rid in enumerate(ids):
        assert [a["outcome"] for a in attempts_of(db_url, rid)] == ["success"]
        hits = rx.hits[str(rid)]
        assert len(hits) == hits_at_kill[rid] + (rid in claimed)
        assert {h.headers["idempotency-key"] for h in hits} == {f"batcher:req:{rid}"}
        assert all(body_json(h) == result_line(f"b{batch_id}-r{i}") for h in hits)
