"""The pipeline end to end in process: queued requests → batching sensor → upload run → status
sensor → results run, against the simulator, on every endpoint and through the failure paths."""

from __future__ import annotations

import pytest

from batch_pipeline.intake.endpoints import SUPPORTED_URLS

STAGES = ("batching_sensor", "status_sensor")
# The results run delivers what it stored; no RabbitMQ here, so each send waits for its retry (the
# request is back in openai_processed) and the batch stays delivering.
STORED = "delivering"
TRANSITIONS_OK = [
    "ready",
    "uploading",
    "uploaded",
    "openai_processing",
    "openai_completed",
    "downloading",
    "ready_to_deliver",
    "delivering",
]


def states(driver) -> dict[str, int]:
    return {
        r["state"]: r["n"]
        for r in driver.query("SELECT state, count(*) AS n FROM batchman.requests GROUP BY 1")
    }


def transitions(driver, batch_id: int) -> list[str]:
    rows = driver.query(
        "SELECT to_state FROM batchman.batch_transitions WHERE batch_id = %s ORDER BY id", batch_id
    )
    return [r["to_state"] for r in rows]


def fill_open_batches(driver) -> None:
    """What an upload run's first transaction does (the tests then play a run that died after it)."""
    from batch_pipeline.db import connect
    from batch_pipeline.store.batching import BatchLimits, fill_batch

    with connect(driver.db_url) as conn:
        for batch in conn.execute("SELECT * FROM batchman.batches WHERE request_count = 0").fetchall():
            fill_batch(conn, batch, BatchLimits(50_000, 199_000_000, 0), 10**9)
        conn.commit()


@pytest.mark.parametrize("url", SUPPORTED_URLS)
def test_happy_path_every_endpoint(driver, sim, add_requests, url: str) -> None:
    model = "text-embedding-3-small" if "embeddings" in url else "gpt-4o-mini"
    extra = {"image": "https://images.example/cat.png"} if url == "/v1/images/edits" else {}
    add_requests(url, model, 5, **extra)
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 5}
    rows = driver.query("SELECT result, error_msg FROM batchman.requests")
    assert all(r["result"]["response"]["status_code"] == 200 and r["error_msg"] is None for r in rows)
    batch = driver.query("SELECT * FROM batchman.batches")[0]
    assert batch["state"] == STORED and batch["openai_batch_id"].startswith("batch_")
    assert batch["openai_completed"] == 5 and batch["input_tokens"] is not None
    assert transitions(driver, batch["id"]) == TRANSITIONS_OK
    assert sim.stats()["batches_created"] == 1


def test_rerunning_a_finished_results_run_changes_nothing(driver, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    driver.drive(stages=STAGES)
    before = driver.query("SELECT id, state, result, updated_at FROM batchman.requests ORDER BY id")
    again = driver.defs.resolve_job_def("results_job").execute_in_process(
        instance=driver.instance, partition_key="1"
    )
    assert again.success
    assert driver.query("SELECT id, state, result, updated_at FROM batchman.requests ORDER BY id") == before


def test_expiry_keeps_partial_results_and_resubmits_the_rest(driver, sim, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 6)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)  # created, still in progress
    openai_id = driver.query("SELECT openai_batch_id FROM batchman.batches")[0]["openai_batch_id"]
    sim.http.post(f"/_sim/batches/{openai_id}/expire").raise_for_status()
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 6}
    first, second = driver.query("SELECT * FROM batchman.batches ORDER BY id")
    assert first["openai_status"] == "expired" and first["resubmitted_count"] > 0
    assert second["request_count"] == first["resubmitted_count"]
    assert all(r["error_msg"] is None for r in driver.query("SELECT error_msg FROM batchman.requests"))
    assert driver.query("SELECT max(resubmit_count) AS n FROM batchman.requests")[0]["n"] == 1


def test_cancel_delivers_partial_results_and_cancellation_errors(driver, sim, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 4)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)
    openai_id = driver.query("SELECT openai_batch_id FROM batchman.batches")[0]["openai_batch_id"]
    sim.advance(6)  # validating (1 s) then half of in_progress (10 s): two of the four lines ran
    sim.client.batches.cancel(openai_id)
    driver.drive(stages=STAGES)
    batch = driver.query("SELECT * FROM batchman.batches")[0]
    assert batch["openai_status"] == "cancelled" and batch["state"] == STORED
    rows = driver.query("SELECT result, error_msg FROM batchman.requests ORDER BY id")
    assert len(rows) == 4 and all(r["result"] is not None for r in rows)
    ran = [r for r in rows if r["error_msg"] is None]
    cancelled = [r for r in rows if r["error_msg"] is not None]
    assert ran and cancelled, rows  # both kinds, so each assertion below checks something
    assert all(r["result"]["response"]["status_code"] == 200 and r["result"]["error"] is None for r in ran)
    assert all(r["result"]["error"]["code"] == "batch_cancelled" for r in cancelled)
    assert all(r["error_msg"].startswith("batch_cancelled: ") for r in cancelled)
    assert sim.stats()["batches_created"] == 1  # cancelled work is not resubmitted


def test_validation_failure_fails_the_bad_line_and_resubmits_the_rest(driver, sim, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 4, faults={2: "invalid_line"})
    driver.drive(stages=STAGES)
    rows = {
        r["custom_id"]: r
        for r in driver.query("SELECT custom_id, state, error_msg, result FROM batchman.requests")
    }
    assert rows["r-2"]["state"] == "openai_processed" and "invalid" in rows["r-2"]["error_msg"]
    assert rows["r-2"]["result"]["error"]["code"]
    assert all(rows[f"r-{i}"]["error_msg"] is None for i in (0, 1, 3))
    first, second = driver.query("SELECT * FROM batchman.batches ORDER BY id")
    assert first["openai_status"] == "failed" and second["request_count"] == 3
    assert sim.stats()["batches_created"] == 2


def test_token_limit_exceeded_backs_off_then_succeeds(driver, sim, add_requests) -> None:
    sim.faults(token_limits={"gpt-4o-mini": 1})
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    driver.drive(stages=STAGES)
    batch = driver.query("SELECT * FROM batchman.batches")[0]
    assert batch["state"] == "waiting_for_capacity"
    assert (
        batch["capacity_wait_reason"] == "token_limit_exceeded_backoff" and batch["token_limit_retries"] == 1
    )
    wait = driver.query("SELECT extract(epoch FROM next_check_at - now()) AS s FROM batchman.batches")[0]["s"]
    assert 4 * 60 < wait <= 5 * 60  # the first wait of the 5, 10, 20, 40, 80 minute schedule
    assert states(driver) == {"pending": 3}  # requests are not failed
    sim.faults(token_limits={})
    driver.query("UPDATE batchman.batches SET next_check_at = now() RETURNING id")  # the wait is over
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 3}
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == STORED
    assert sim.stats()["batches_by_metadata"]["batchman_batch_id"] == {"1": 2}


def test_token_limit_exceeded_at_create_waits_then_succeeds(driver, sim, add_requests) -> None:
    sim.faults(create_token_limit_refusals=1)
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(rounds=1, stages=("batching_sensor",))
    batch = driver.query("SELECT * FROM batchman.batches")[0]
    assert (batch["state"], batch["capacity_wait_reason"]) == ("waiting_for_capacity", "token_limit_exceeded")
    assert batch["openai_status"] is None and batch["token_limit_retries"] == 0  # no retry spent
    assert states(driver) == {"pending": 2}
    driver.query("UPDATE batchman.batches SET next_check_at = now() RETURNING id")  # the minute is over
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 2}
    assert sim.stats()["batches_created"] == 1


def test_per_line_server_errors_are_resubmitted_then_delivered(driver, sim, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3, faults={1: "server_error"})
    driver.drive(stages=STAGES)
    rows = {r["custom_id"]: r for r in driver.query("SELECT * FROM batchman.requests")}
    # OPENAI_MAX_RESUBMITS=1 in these tests: one more try, then the error line is the result.
    assert rows["r-1"]["resubmit_count"] == 1 and "server_error" in rows["r-1"]["error_msg"]
    assert rows["r-1"]["result"]["response"]["status_code"] >= 500
    assert rows["r-0"]["error_msg"] is None and rows["r-0"]["resubmit_count"] == 0
    assert sim.stats()["batches_created"] == 2


def test_capacity_waits_and_admits_when_a_batch_finishes(driver, sim, add_requests) -> None:
    # Limit 25 tokens for this model: each batch here estimates 20 (2 requests x 10), so one at a time.
    driver.query("INSERT INTO batchman.model_limits VALUES ('gpt-4.1-mini', 25) RETURNING model_prefix")
    add_requests("/v1/responses", "gpt-4.1-mini", 2, prefix="a")
    driver.drive(rounds=1, stages=("batching_sensor",))
    add_requests("/v1/responses", "gpt-4.1-mini", 2, prefix="b")
    driver.drive(rounds=1, stages=("batching_sensor",))
    second = driver.query("SELECT * FROM batchman.batches ORDER BY id")[1]
    assert (
        second["state"] == "waiting_for_capacity"
        and second["capacity_wait_reason"] == "insufficient_headroom"
    )
    driver.query("UPDATE batchman.batches SET next_check_at = now() RETURNING id")
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 4}
    assert sim.stats()["batches_created"] == 2


def test_crash_between_create_and_store_submits_no_second_batch(driver, sim, add_requests) -> None:
    """A create call that succeeded at OpenAI but was never recorded is adopted, not repeated."""
    from batch_pipeline import openai_client as oai

    add_requests("/v1/responses", "gpt-4o-mini", 3)
    requests = driver.tick("batching_sensor")  # opens batch 1; its upload run has not run yet
    fill_open_batches(driver)
    # The crashed run: uploaded the file, stored the intent, created the batch, then died.
    lines = "".join(
        r["payload"] + "\n" for r in driver.query("SELECT payload FROM batchman.requests ORDER BY id")
    )
    uploaded = sim.client.files.create(file=(oai.input_file_name(1), lines.encode()), purpose="batch")
    oai.create_batch(sim.client, 1, uploaded.id, "/v1/responses")
    driver.query(
        "UPDATE batchman.batches SET state = 'uploaded', openai_input_file_id = %s,"
        " openai_status = 'creating' RETURNING id",
        uploaded.id,
    )
    driver.execute("batching_sensor", requests[0])  # the re-run
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 3}
    assert sim.stats()["batches_by_metadata"]["batchman_batch_id"] == {"1": 1}


def test_crash_after_upload_reuses_the_uploaded_file(driver, sim, add_requests) -> None:
    from batch_pipeline import openai_client as oai

    add_requests("/v1/responses", "gpt-4o-mini", 2)
    requests = driver.tick("batching_sensor")
    fill_open_batches(driver)
    lines = "".join(
        r["payload"] + "\n" for r in driver.query("SELECT payload FROM batchman.requests ORDER BY id")
    )
    sim.client.files.create(file=(oai.input_file_name(1), lines.encode()), purpose="batch")
    driver.query("UPDATE batchman.batches SET state = 'uploading' RETURNING id")  # died before storing the id
    driver.execute("batching_sensor", requests[0])
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 2}
    assert sim.stats()["files_uploaded"] == 1


@pytest.mark.parametrize(
    ("stalled_state", "sensor"), [("uploading", "batching_sensor"), ("downloading", "status_sensor")]
)
def test_a_stage_that_stopped_without_progress_is_relaunched(
    driver, sim, add_requests, stalled_state: str, sensor: str
) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    if stalled_state == "downloading":
        driver.drive(stages=STAGES)  # all the way through a first results run ...
        driver.query(  # ... which, as far as the database knows, died half way
            "UPDATE batchman.batches SET state = 'downloading' RETURNING id"
        )
        driver.query("UPDATE batchman.requests SET state = 'openai_processing', result = NULL RETURNING id")
    else:
        driver.tick("batching_sensor")  # opens the batch; its upload run then gives up mid-way
        fill_open_batches(driver)
        driver.query("UPDATE batchman.batches SET state = 'uploading' RETURNING id")
    assert driver.tick(sensor) == []  # recent: its run may still be working
    driver.query("UPDATE batchman.batches SET updated_at = now() - interval '16 minutes' RETURNING id")

    requests = driver.tick(sensor)
    assert len(requests) == 1 and requests[0].run_key.endswith(":1")
    driver.execute(sensor, requests[0])
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 2}
    assert sim.stats()["batches_created"] == 1  # the relaunch adopted what existed at OpenAI
    reasons = [r["reason"] for r in driver.query("SELECT reason FROM batchman.batch_transitions")]
    assert any(r.startswith("relaunched: no progress") for r in reasons)


def test_status_checks_stop_at_their_time_budget_when_openai_is_slow(driver, sim, add_requests) -> None:
    from batch_pipeline.db import connect
    from batch_pipeline.stages.status import PollSettings, poll_due

    for model in ("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini"):
        add_requests("/v1/responses", model, 1, prefix=model)
    driver.drive(rounds=1, stages=("batching_sensor",))  # three batches at OpenAI
    sim.advance(60)
    sim.faults(slow_rate=1.0, slow_seconds=1.0)  # every call now takes a second

    ready = poll_due(lambda: connect(driver.db_url), sim.client, PollSettings(0, (5.0,)), 50, 0.5)

    assert len(ready) == 1  # the first call overran the budget; the other two wait, still due
    rows = driver.query("SELECT state FROM batchman.batches ORDER BY id")
    assert sorted(r["state"] for r in rows) == ["openai_completed", "openai_processing", "openai_processing"]


def test_the_sensor_opens_one_batch_per_due_group_and_the_upload_run_fills_it(driver, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    first = driver.tick("batching_sensor")
    assert driver.tick("batching_sensor") == first  # no second batch while one is open
    (batch,) = driver.query("SELECT * FROM batchman.batches")
    assert batch["request_count"] == 0 and batch["state"] == "ready"
    assert states(driver) == {"pending": 3}
    assert driver.query("SELECT count(*) AS n FROM batchman.requests WHERE batch_id IS NULL")[0]["n"] == 3

    driver.execute("batching_sensor", first[0])
    (batch,) = driver.query("SELECT * FROM batchman.batches")
    assert (batch["request_count"], batch["state"]) == (3, "openai_processing")
    assert states(driver) == {"openai_processing": 3}


def test_a_request_over_a_lowered_limit_waits_without_opening_batches(driver, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)  # each estimated at about 10 tokens
    driver.query("INSERT INTO batchman.model_limits VALUES ('gpt-4o-mini', 5) RETURNING model_prefix")
    assert driver.tick("batching_sensor") == []
    assert driver.query("SELECT count(*) AS n FROM batchman.batches")[0]["n"] == 0
    driver.query("DELETE FROM batchman.model_limits RETURNING model_prefix")  # the limit is raised
    assert len(driver.tick("batching_sensor")) == 1
