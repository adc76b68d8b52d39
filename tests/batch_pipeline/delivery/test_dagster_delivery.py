"""deliver_job, redeliver_job and delivery_sensor against a real Postgres and a test Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from batch_pipeline.config import Settings
from batch_pipeline.defs.delivery import REDELIVER_ONLY_TAG, deliver_job, make_delivery_sensor, redeliver_job
from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import build_resources
from tests.batch_pipeline.delivery.conftest import batch_state, requests_of, rows, seed_batch, webhook
from tests.dagster_instance import dagster_test_instance


def resources(db_url: str) -> dict:
    settings = Settings(
        _env_file=None,
        database_url=db_url,
        rabbitmq_url=None,
        delivery_retry_schedule_seconds="3600",
        delivery_retry_jitter=0.0,
    )
    return build_resources(settings)


delivery_sensor = make_delivery_sensor(deliver_job, interval_seconds=30)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dagster_test_instance() as inst:
        yield inst


def tick(instance: dg.DagsterInstance, db_url: str) -> dg.SensorResult:
    return delivery_sensor(dg.build_sensor_context(instance=instance, resources=resources(db_url)))


def run(job: dg.JobDefinition, instance: dg.DagsterInstance, db_url: str, batch_id: int, **kw):
    instance.add_dynamic_partitions(batch_partitions.name, [str(batch_id)])
    result = job.execute_in_process(
        instance=instance, resources=resources(db_url), partition_key=str(batch_id), **kw
    )
    assert result.success
    return result


def transitions(db_url: str, batch_id: int) -> list[tuple[str | None, str]]:
    sql = "SELECT from_state, to_state FROM batchman.batch_transitions WHERE batch_id = %s ORDER BY id"
    return [(r["from_state"], r["to_state"]) for r in rows(db_url, sql, (batch_id,))]


def test_sensor_launches_one_run_per_wave_and_the_job_delivers(db_url, instance, receiver_factory) -> None:
    rx = receiver_factory(lambda seen, _req: (503, {}) if seen == 0 else (200, {}))
    batch_id, _ = seed_batch(db_url, [webhook(rx.url)] * 2, state="ready_to_deliver")
    seed_batch(db_url, [webhook(rx.url)], state="openai_processing")  # not ours yet

    first = tick(instance, db_url)
    assert [(r.run_key, r.partition_key, r.tags["batch_id"]) for r in first.run_requests] == [
        (f"deliver:{batch_id}:1", str(batch_id), str(batch_id))
    ]
    assert first.dynamic_partitions_requests[0].partition_keys == [str(batch_id)]
    assert tick(instance, db_url).run_requests == []  # requested already: no second run for the wave

    result = run(deliver_job, instance, db_url, batch_id, tags={"batch_id": str(batch_id)})
    assert result.output_for_node("deliver_results")["states"] == {"openai_processed": 2}
    assert batch_state(db_url, batch_id) == "delivering"
    assert tick(instance, db_url).run_requests == []  # the retries are an hour away

    with psycopg.connect(db_url) as conn:  # the hour passes
        conn.execute("UPDATE batchman.requests SET next_attempt_at = now() WHERE batch_id = %s", (batch_id,))
    (again,) = tick(instance, db_url).run_requests
    assert again.run_key == f"deliver:{batch_id}:2"
    run(deliver_job, instance, db_url, batch_id)
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
    assert transitions(db_url, batch_id) == [("ready_to_deliver", "delivering"), ("delivering", "delivered")]
    assert tick(instance, db_url).run_requests == []


def test_redeliver_job_sends_everything_again(db_url, instance, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, ids = seed_batch(db_url, [webhook(rx.url)] * 3, state="ready_to_deliver")
    run(deliver_job, instance, db_url, batch_id)
    assert batch_state(db_url, batch_id) == "delivered"

    run(redeliver_job, instance, db_url, batch_id)  # only=failed by default: nothing failed
    assert rx.total() == 3
    run(redeliver_job, instance, db_url, batch_id, tags={REDELIVER_ONLY_TAG: "all"})
    assert all(len(rx.hits[str(i)]) == 2 for i in ids)
    assert batch_state(db_url, batch_id) == "delivered"
    assert transitions(db_url, batch_id)[-2:] == [("delivered", "delivering"), ("delivering", "delivered")]


def test_job_does_nothing_for_a_batch_not_in_a_delivery_state(db_url, instance, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, _ = seed_batch(db_url, [webhook(rx.url)], state="cancelled")
    result = run(deliver_job, instance, db_url, batch_id)
    assert result.output_for_node("begin_delivery") is False
    assert rx.total() == 0 and batch_state(db_url, batch_id) == "cancelled"


def test_sensor_settles_a_delivering_batch_whose_run_died_before_deciding(db_url, instance) -> None:
    batch_id, _ = seed_batch(db_url, [webhook("http://unused.example/")], state="delivering")
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE batchman.requests SET state = 'delivered' WHERE batch_id = %s", (batch_id,))
    (request,) = tick(instance, db_url).run_requests
    assert request.partition_key == str(batch_id)
    run(deliver_job, instance, db_url, batch_id)
    assert batch_state(db_url, batch_id) == "delivered"
