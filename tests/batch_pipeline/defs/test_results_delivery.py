"""The results run delivers what it stored (one run per finished batch, no wait for the delivery
sensor), and the delivery sensor, ticking while the results are stored, leaves that batch to it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from batch_pipeline.defs import assets
from batch_pipeline.defs import results as results_defs
from tests.conftest import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def _to_webhook(db_url: str, url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET delivery_config = %s",
            (json.dumps({"type": "webhook", "webhook_url": url}),),
        )


def _until_finished_at_openai(driver) -> list[dg.RunRequest]:
    """Upload the batch, let OpenAI finish it; the status sensor's results run requests (not run)."""
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    driver.sim.advance(60)
    requests = driver.tick("status_sensor")
    assert [r.partition_key for r in requests] == ["1"]
    return requests


def test_the_results_run_delivers_and_reports_both_assets(driver, db_url, add_requests, receiver) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    _to_webhook(db_url, receiver.url)
    (request,) = _until_finished_at_openai(driver)

    run = driver.execute("status_sensor", request)

    assert run.output_for_node("store_results") is True
    assert run.output_for_node("deliver_stored_results")["attempts"] == 3
    assert sorted(b["custom_id"] for _, b in receiver.received) == ["r-0", "r-1", "r-2"]
    (batch,) = driver.query("SELECT state, delivery_requested_at FROM batchman.batches")
    assert batch["state"] == "delivered" and batch["delivery_requested_at"] is None  # released
    reasons = driver.query(
        "SELECT reason FROM batchman.batch_transitions WHERE to_state = 'delivering' ORDER BY id"
    )
    assert [r["reason"] for r in reasons] == [f"results run {run.run_id}"]
    # Both stages' assets are materialized for the batch by this one run.
    for key in (assets.ASSET_BATCH_RESULTS, assets.ASSET_BATCH_DELIVERIES):
        records = driver.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=["1"]), limit=5
        ).records
        assert [r.run_id for r in records] == [run.run_id], key
    # Nothing left for the delivery sensor: no second delivery run.
    assert driver.tick("delivery_sensor") == []


def test_a_delivery_sensor_tick_right_after_the_results_commit_launches_nothing(
    driver, db_url, add_requests, receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    _to_webhook(db_url, receiver.url)
    (request,) = _until_finished_at_openai(driver)
    ticked: list[list[dg.RunRequest]] = []
    real_ingest = results_defs.ingest_results

    def ingest_then_tick(*args, **kwargs):
        summary = real_ingest(*args, **kwargs)
        # The results are committed and the batch is ready_to_deliver: the sensor's worst moment.
        assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == "ready_to_deliver"
        ticked.append(driver.tick("delivery_sensor"))
        return summary

    monkeypatch.setattr(results_defs, "ingest_results", ingest_then_tick)
    run = driver.execute("status_sensor", request)

    assert ticked == [[]]
    assert run.output_for_node("store_results") is True
    assert len(receiver.received) == 2
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == "delivered"


def test_a_batch_whose_lines_all_go_again_is_not_delivered_nor_held(driver, db_url, add_requests) -> None:
    # Every line fails with a retryable error: the batch is resubmitted, nothing is sent, and the
    # results run's reservation does not linger on it.
    add_requests("/v1/responses", "gpt-4o-mini", 2, faults={0: "server_error", 1: "server_error"})
    (request,) = _until_finished_at_openai(driver)

    run = driver.execute("status_sensor", request)

    assert run.output_for_node("store_results") is False
    assert run.output_for_node("deliver_stored_results")["attempts"] == 0
    batch = driver.query("SELECT state, delivery_requested_at FROM batchman.batches WHERE id = 1")[0]
    assert batch["state"] == "resubmitted" and batch["delivery_requested_at"] is None
