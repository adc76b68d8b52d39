"""Checks shared by the fault and crash tests."""

from __future__ import annotations

from typing import Any

# A batch whose results are stored, whatever delivery has done with them since (not under test here).
RESULTS_STORED = ("ready_to_deliver", "delivering", "delivered", "partially_delivered", "delivery_failed")


def assert_results_stored_once(driver: Any, sim: Any, n: int, failed_runs: int = 0) -> None:
    """Every request has its result (one row each: none lost, none doubled), the batch got past
    its results, no run failed but those expected, and OpenAI saw one upload and one create."""
    rows = driver.query("SELECT custom_id, state, result FROM batchman.requests")
    assert len(rows) == n and len({r["custom_id"] for r in rows}) == n
    assert all(r["result"] is not None for r in rows), rows
    assert not {r["state"] for r in rows} & {"pending", "openai_processing"}, rows
    (batch,) = driver.query("SELECT state FROM batchman.batches")
    assert batch["state"] in RESULTS_STORED, batch
    assert len(driver.failed_runs()) == failed_runs
    stats = sim.stats()
    assert stats["files_uploaded"] == 1 and stats["batches_created"] == 1, stats
    assert list(stats["batches_by_metadata"]["batchman_batch_id"].values()) == [1]
