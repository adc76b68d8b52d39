"""A stage run that never started (its launch timed out on a loaded box: the code server gives up on
StartRun after 60 s) spent its run key without moving the batch: after a while without progress the
sensor launches the batch again, under a new key, instead of leaving it in 'ready' or
'openai_completed' for good."""

from __future__ import annotations

from batch_pipeline.store.batches import STALLED_AFTER_SECONDS


def _age(driver, seconds: float) -> None:
    driver.query(
        "UPDATE batchman.batches SET updated_at = now() - make_interval(secs => %s) RETURNING id", seconds
    )


def test_a_ready_batch_whose_upload_run_never_started_is_launched_again(driver, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    assert [r.run_key for r in driver.tick("batching_sensor")] == ["upload:1:0"]  # never run
    assert [r.run_key for r in driver.tick("batching_sensor")] == ["upload:1:0"]  # spent: skipped
    _age(driver, STALLED_AFTER_SECONDS + 1)

    (again,) = driver.tick("batching_sensor")

    assert again.run_key == "upload:1:1"
    driver.execute("batching_sensor", again)
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == "openai_processing"


def test_a_finished_batch_whose_results_run_never_started_is_launched_again(driver, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    driver.sim.advance(60)
    (first,) = driver.tick("status_sensor")  # never run
    assert first.run_key.endswith(":0")
    _age(driver, STALLED_AFTER_SECONDS + 1)

    requests = driver.tick("status_sensor")

    # The spent key comes again (Dagster skips it) with the new one.
    assert {r.run_key for r in requests} == {first.run_key, first.run_key[:-1] + "1"}
    driver.execute("status_sensor", next(r for r in requests if r.run_key.endswith(":1")))
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] != "openai_completed"
