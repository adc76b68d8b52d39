"""Runs launched by hand (Launchpad, partition backfills) through Dagster's own API: each carries the
batch_id tag the one-run-per-batch limit needs, and each job does what its description says."""

from __future__ import annotations

import psycopg
import pytest

JOBS = ["upload_job", "results_job", "refresh_status_job", "deliver_job", "redeliver_job", "restart_job"]


def state(driver, batch_id: int = 1) -> str:
    return driver.query("SELECT state FROM batchman.batches WHERE id = %s", batch_id)[0]["state"]


@pytest.mark.parametrize("job_name", [*JOBS, "checks_job"])
def test_hand_launched_runs_get_the_batch_id_tag(driver, job_name: str) -> None:
    job = driver.defs.resolve_job_def(job_name)
    driver.instance.add_dynamic_partitions("batches", ["41", "42"])
    # The tags a backfill over chosen batches gives each partition's run (the daemon asks the job).
    for key in ("41", "42"):
        assert job.get_tags_for_partition_key(key, None)["batch_id"] == key
    result = job.execute_in_process(instance=driver.instance, partition_key="42", raise_on_error=False)
    assert result.dagster_run.tags["batch_id"] == "42"
    assert result.dagster_run.tags["dagster/partition"] == "42"
    assert job.description and "state" in job.description  # says what it does per state


def test_refresh_status_stores_and_delivers_results_of_a_finished_batch_in_one_run(
    driver, sim, add_requests
) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    job = driver.defs.resolve_job_def("refresh_status_job")
    early = job.execute_in_process(instance=driver.instance, partition_key="1")
    assert early.output_for_node("check_status_now") == "in_flight" and state(driver) == "openai_processing"
    sim.advance(60)
    done = job.execute_in_process(instance=driver.instance, partition_key="1")
    assert done.output_for_node("check_status_now") == "results"
    # Stored, and sent in the same run (no RabbitMQ here: each send waits for its retry).
    assert done.output_for_node("store_results_if_done") is True
    assert done.output_for_node("deliver_stored_results")["attempts"] == 2
    assert state(driver) == "delivering"


def test_restart_job_requeues_a_failed_batch_and_skips_others(driver, db_url, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    job = driver.defs.resolve_job_def("restart_job")
    skipped = job.execute_in_process(instance=driver.instance, partition_key="1")
    assert skipped.output_for_node("restart_failed") == "skipped" and state(driver) == "openai_processing"
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE batchman.batches SET state = 'failed' WHERE id = 1")
    restarted = job.execute_in_process(instance=driver.instance, partition_key="1")
    assert restarted.output_for_node("restart_failed") == "restarted"
    assert state(driver) == "resubmitted"
    queued = driver.query("SELECT count(*) AS n FROM batchman.requests WHERE batch_id IS NULL")
    assert queued[0]["n"] == 2
