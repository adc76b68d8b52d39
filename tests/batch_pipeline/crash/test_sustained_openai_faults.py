"""Sustained OpenAI faults (issue 15, item 3): runs of 4+ consecutive 500s, 429s with Retry-After and
timeouts on every OpenAI call the pipeline makes, armed with the simulator's ``fail_next``.

The SDK retries transient errors itself (``PIPELINE_MAX_RETRIES``; none for the two calls that create
something), so a single fault never reaches our own retry policy: four in a row do. The pipeline's
Dagster jobs run for real (``Driver``) against a real simulator server, with production retry counts
and test-sized waits (``quick_waits``). Each test checks that the pipeline waited and recovered:
every request has its result, no run failed (unless the test says why), nothing was uploaded or
created twice at OpenAI, and the faults were really met.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from batch_pipeline.admin.cancel import cancel_batch
from batch_pipeline.admin.errors import OpenAICallFailed
from batch_pipeline.config import Settings
from tests.batch_pipeline.crash.helpers import RESULTS_STORED, assert_results_stored_once

pytestmark = pytest.mark.usefixtures("quick_waits")

STAGES = ("batching_sensor", "status_sensor")
MODEL, URL = "gpt-4o-mini", "/v1/chat/completions"
# Longer than the client timeout of these tests (quick_waits): the call runs, its answer comes too late.
HELD_SECONDS = 30


def arm(sim: Any, **faults: dict[str, Any]) -> None:
    """``fail_next`` for the named operations (``files_create`` for ``files.create``)."""
    sim.faults(fail_next={op.replace("_", "."): spec for op, spec in faults.items()})


def left(sim: Any, operation: str) -> int:
    return sim.http.get("/_sim/faults").json()["fail_next"][operation]["count"]


def assert_recovered(driver: Any, sim: Any, n: int, failed_runs: int = 0) -> None:
    assert_results_stored_once(driver, sim, n, failed_runs)
    rows = driver.query("SELECT result FROM batchman.requests")
    assert all(r["result"]["response"]["status_code"] == 200 for r in rows)


# (operation, fault, count): the call each stage makes, and a run of faults beyond the SDK's retries.
FAST = [
    ("batches.create", "500", 4),  # create (no SDK retries)
    ("batches.retrieve", "500", 4),  # status sensor: the batch waits for its next poll
    ("files.content", "500", 4),  # results run
    ("files.content", "429", 4),  # Retry-After: 1 honoured by the SDK, then the op's retry
    ("batches.create", "slow", 4),  # timeout: the batch was created unheard; the retry adopts it
]
SOAK = [
    ("files.create", "500", 4),  # upload (no SDK retries: the op's RetryPolicy retries)
    ("files.list", "500", 4),  # upload: looking for an input file uploaded before a crash
    ("files.list", "429", 4),
    ("files.create", "429", 4),
    ("batches.create", "429", 4),
    ("batches.retrieve", "429", 4),
    ("files.list", "503", 6),
    ("batches.retrieve", "503", 6),
    ("files.content", "503", 6),
    ("files.list", "slow", 4),
    ("files.create", "slow", 4),
    ("batches.retrieve", "slow", 4),
    ("files.content", "slow", 4),
]


def _run(driver: Any, sim: Any, add_requests: Any, operation: str, fault: str, count: int) -> None:
    if fault == "429":
        sim.faults(retry_after_seconds=1)
    arm(sim, **{operation: {"fault": fault, "count": count, "seconds": HELD_SECONDS}})
    add_requests(URL, MODEL, 3)
    driver.drive(rounds=15, stages=STAGES)
    assert_recovered(driver, sim, 3)
    if operation in ("files.create", "batches.create") and fault == "slow":
        # The created object is adopted: the call that timed out is never made again.
        assert left(sim, operation) == count - 1
    else:
        assert left(sim, operation) == 0  # every fault was met
    met = sim.stats()["http_faults"].get("slow" if fault == "slow" else fault, 0)
    assert met == count - left(sim, operation)


@pytest.mark.parametrize(("operation", "fault", "count"), FAST)
def test_a_run_of_faults_on_one_call_is_waited_out(
    driver, sim, add_requests, operation, fault, count
) -> None:
    _run(driver, sim, add_requests, operation, fault, count)


@pytest.mark.soak
@pytest.mark.parametrize(("operation", "fault", "count"), SOAK)
def test_a_run_of_faults_on_one_call_is_waited_out_soak(
    driver, sim, add_requests, operation, fault, count
) -> None:
    _run(driver, sim, add_requests, operation, fault, count)


@pytest.mark.soak
def test_the_lookup_after_a_lost_create_answer_is_waited_out_too(driver, sim, add_requests) -> None:
    # The create runs and its answer is lost; the retry must look before creating again, and that
    # lookup (batches.list) meets four 500s in a row.
    sim.faults(drop_response_next={"batches.create": 1})
    arm(sim, batches_list={"fault": "500", "count": 4})
    add_requests(URL, MODEL, 3)
    driver.drive(stages=STAGES)
    assert_recovered(driver, sim, 3)
    assert left(sim, "batches.list") == 0


@pytest.mark.parametrize(
    ("operation", "stalled_state"),
    [("batches.create", "uploaded"), pytest.param("files.content", "downloading", marks=pytest.mark.soak)],
)
def test_faults_outlasting_every_retry_fail_the_run_not_the_batch(
    driver, sim, add_requests, operation, stalled_state
) -> None:
    """More faults than the SDK and the op's RetryPolicy retry: the run fails, the batch waits in
    its working state, and the sensor relaunches it once it is stale; it then goes through."""
    driver.allow_failed_runs = True
    per_run = 5 if operation == "batches.create" else 5 * 4  # op attempts x SDK attempts
    arm(sim, **{operation: {"fault": "500", "count": per_run + 1}})
    add_requests(URL, MODEL, 3)
    driver.drive(rounds=3, stages=STAGES)
    assert len(driver.failed_runs()) == 1
    (batch,) = driver.query("SELECT state FROM batchman.batches")
    assert batch["state"] == stalled_state  # nothing failed for good: no request has a result yet
    assert driver.query("SELECT count(*) AS n FROM batchman.requests WHERE result IS NOT NULL")[0]["n"] == 0
    # The time the sensor waits before relaunching a stalled batch (STALLED_AFTER_SECONDS) passes.
    with psycopg.connect(driver.db_url) as conn:
        conn.execute("UPDATE batchman.batches SET updated_at = now() - interval '1 hour'")
    driver.drive(stages=STAGES)
    assert_recovered(driver, sim, 3, failed_runs=1)
    assert left(sim, operation) == 0


def test_file_deletion_faults_leave_the_files_for_the_next_cleanup(driver, sim, add_requests) -> None:
    add_requests(URL, MODEL, 3)
    driver.drive(stages=STAGES)
    cleanup = driver.defs.resolve_job_def("cleanup_job")
    arm(sim, files_delete={"fault": "500", "count": 4})

    assert cleanup.execute_in_process(instance=driver.instance).success
    assert sim.stats()["files_deleted"] == 0  # the SDK's 4 attempts met the 4 faults: logged, kept
    assert driver.query("SELECT files_deleted_at FROM batchman.batches")[0]["files_deleted_at"] is None

    assert cleanup.execute_in_process(instance=driver.instance).success
    assert sim.stats()["files_deleted"] == 2  # the input file and the output file
    assert driver.query("SELECT files_deleted_at FROM batchman.batches")[0]["files_deleted_at"] is not None
    assert left(sim, "files.delete") == 0


def test_cancel_faults_answer_the_operator_and_a_second_try_cancels_once(
    driver, sim, add_requests, pipeline_settings: Settings
) -> None:
    add_requests(URL, MODEL, 3)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)  # at OpenAI, in progress
    (batch,) = driver.query("SELECT id, state FROM batchman.batches")
    arm(sim, batches_cancel={"fault": "500", "count": 4})

    async def cancel() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(driver.db_url) as conn:
            return await cancel_batch(conn, pipeline_settings, batch["id"])

    with pytest.raises(OpenAICallFailed):  # the API answers 502; the batch is as it was
        asyncio.run(cancel())
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == "openai_processing"
    assert asyncio.run(cancel())["state"] == "cancelling"
    assert sim.stats()["cancel_requests"] == 1 and left(sim, "batches.cancel") == 0

    driver.drive(stages=STAGES)
    (done,) = driver.query("SELECT state, openai_status FROM batchman.batches")
    assert done["state"] in RESULTS_STORED and done["openai_status"] == "cancelled"
    assert all(r["result"] is not None for r in driver.query("SELECT result FROM batchman.requests"))
