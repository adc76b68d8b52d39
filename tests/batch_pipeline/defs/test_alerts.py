"""The alert sensor: a failed check, a failed run and a failed batch reach the batch's history and a
signed POST to ALERT_WEBHOOK_URL, each once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from batch_pipeline.defs.definitions import build_definitions
from batch_pipeline.delivery.signing import Signer
from tests.conftest import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"alert-test-secret-32-bytes-long!").decode()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def alerting(driver, pipeline_settings, db_url, receiver):
    settings = pipeline_settings.model_copy(
        update={"alert_webhook_url": receiver.url, "webhook_signing_secret": _secret()}
    )
    driver.defs = build_definitions(settings, dsn=db_url)
    driver.alert_cursor = None
    tick(driver)  # the first tick only marks where reading starts
    assert receiver.received == []
    return driver


def tick(driver) -> None:
    """One alert-sensor tick, keeping its cursor between ticks as the daemon does."""
    sensor = driver.defs.get_sensor_def("alert_sensor")
    with dg.build_sensor_context(
        instance=driver.instance, resources=driver.defs.resources, cursor=driver.alert_cursor
    ) as context:
        result = sensor(context)
    assert not result.run_requests
    driver.alert_cursor = result.cursor


def _secret():
    from pydantic import SecretStr

    return SecretStr(SECRET)


def history(db_url: str, batch_id: int) -> list[dict]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT from_state, to_state, reason FROM batchman.batch_transitions"
            " WHERE batch_id = %s AND reason LIKE 'alert:%%' ORDER BY id",
            (batch_id,),
        ).fetchall()
    return [{"from": f, "to": t, "reason": r} for f, t, r in rows]


def tick_until_quiet(driver) -> None:
    # Ticks run synchronously; a second tick proves nothing is reported twice.
    tick(driver)
    tick(driver)


def test_failed_check_is_recorded_and_posted_signed(alerting, db_url, add_requests, receiver) -> None:
    driver = alerting
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(stages=("batching_sensor", "status_sensor"))
    with psycopg.connect(db_url) as conn:  # one request lost from its batch's books
        conn.execute("UPDATE batchman.batches SET request_count = request_count + 1 WHERE id = 1")
    driver.defs.resolve_job_def("checks_job").execute_in_process(instance=driver.instance, partition_key="1")
    tick_until_quiet(driver)

    # Both checks that compare against the request count fail; each is reported once, in the batch's
    # history without moving it (the results run has delivered it by now).
    rows = history(db_url, 1)
    assert all(r["from"] == r["to"] for r in rows)
    assert sorted(r["reason"].split(":")[1] for r in rows) == [
        " check every_request_accounted_for failed",
        " check input_lines_match_requests failed",
    ]
    assert len(receiver.received) == 2
    (headers, body) = receiver.received[0]
    assert body["kind"] == "check_failed" and body["batch_id"] == 1
    raw = json.dumps(body).encode()
    signed = Signer(SECRET).sign(headers["webhook-id"], int(headers["webhook-timestamp"]), raw)
    assert headers["webhook-signature"] == signed


def test_failed_run_and_failed_batch_are_reported(alerting, db_url, add_requests, receiver) -> None:
    driver = alerting
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    # A redelivery of a batch that does not exist fails its run.
    driver.instance.add_dynamic_partitions("batches", ["999"])
    failed = driver.defs.resolve_job_def("redeliver_job").execute_in_process(
        instance=driver.instance, partition_key="999", raise_on_error=False
    )
    assert not failed.success
    # An earlier version's batch that went 'failed'.
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE batchman.batches SET state = 'failed' WHERE id = 1")
        conn.execute(
            "INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason)"
            " VALUES (1, 'openai_processing', 'failed', 'gave up')"
        )
    tick_until_quiet(driver)

    kinds = sorted((b["kind"], b["batch_id"]) for _, b in receiver.received)
    assert kinds == [("batch_failed", 1), ("run_failed", 999)]
    assert history(db_url, 1) == []  # the failed transition is itself the history row
