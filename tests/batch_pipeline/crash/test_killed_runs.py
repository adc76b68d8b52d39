"""Crash points through real processes (issue 15, item 2): the upload and results jobs run in a process
of their own, as the daemon's run launcher starts them, and are killed with SIGKILL at their worst
moment. The simulator holds the call the kill must land in (``fail_next`` with ``slow``: the call is
carried out at OpenAI, its answer held back). The batch is then relaunched by its sensor, as the
daemon does once it is stale, and goes through: exactly one OpenAI batch, every line stored once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.batch_pipeline.crash.helpers import assert_results_stored_once

pytestmark = pytest.mark.process

STAGES = ("batching_sensor", "status_sensor")
MODEL, URL = "gpt-4o-mini", "/v1/chat/completions"
HOLD = {"fault": "slow", "count": 1, "seconds": 300}
# A ceiling for a loaded machine (a run process imports Dagster first); the waits end on their condition.
DEADLINE_SECONDS = 240

# One run of one job for one batch, as a run worker executes it (its own process and Dagster instance).
CHILD = """
import sys
import dagster as dg
from batch_pipeline.config import load_settings
from batch_pipeline.defs.definitions import build_definitions

job_name, db_url, base_url, data_dir, key = sys.argv[1:6]
settings = load_settings(
    _env_file=None, database_url=db_url, openai_base_url=base_url, data_dir=data_dir, openai_api_key=None
)
defs = build_definitions(settings, dsn=db_url)
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions("batches", [key])
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, partition_key=key)
"""


def run_in_child(job: str, db_url: str, sim: Any, tmp_path: Path, key: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, job, db_url, f"{sim.url}/v1", str(tmp_path / "child"), key],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], Any], what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_SECONDS} s")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def make_stale(driver: Any) -> None:
    """The time after which the sensors relaunch a batch that made no progress passes."""
    with psycopg.connect(driver.db_url) as conn:
        conn.execute("UPDATE batchman.batches SET updated_at = now() - interval '1 hour'")


def batch_row(driver: Any) -> dict[str, Any]:
    (row,) = driver.query("SELECT * FROM batchman.batches")
    return row


@pytest.mark.parametrize(
    ("held", "counter", "state_at_kill"),
    [
        # Killed between the file upload and the batch create: the file exists, its id is unknown.
        ("files.create", "files_uploaded", ("uploading", None)),
        # Killed between the create and recording it: the batch exists, only the intent is stored.
        ("batches.create", "batches_created", ("uploaded", "creating")),
    ],
)
def test_upload_run_killed_while_openai_holds_the_answer(
    driver, sim, add_requests, tmp_path, held, counter, state_at_kill
) -> None:
    add_requests(URL, MODEL, 3)
    (request,) = driver.tick("batching_sensor")  # the batch is opened; the daemon would launch this run
    sim.faults(fail_next={held: HOLD})
    proc = run_in_child("upload_job", driver.db_url, sim, tmp_path, request.partition_key)
    try:
        wait_until(lambda: sim.stats()[counter] == 1, f"{held} carried out at the simulator", proc)
    finally:
        kill(proc)
    row = batch_row(driver)
    assert (row["state"], row["openai_status"]) == state_at_kill and row["openai_batch_id"] is None

    make_stale(driver)
    driver.drive(stages=STAGES)  # the batching sensor relaunches the upload; then status and results

    assert_results_stored_once(driver, sim, 3)
    reasons = [r["reason"] for r in driver.query("SELECT reason FROM batchman.batch_transitions")]
    assert any(r.startswith("relaunched") for r in reasons)


@pytest.mark.soak  # the stage alone is killed there in make test: stages/test_crashes.py
def test_results_run_killed_mid_ingest_loses_and_doubles_nothing(driver, sim, add_requests, tmp_path) -> None:
    ids = add_requests(URL, MODEL, 4, faults={1: "bad_request"})  # an output and an error file
    driver.drive(rounds=1, stages=("batching_sensor",))  # created at OpenAI, then its clock moves on
    (request,) = driver.tick("status_sensor")  # finished at OpenAI: the results run is due
    with psycopg.connect(driver.db_url) as blocker:
        # Hold one request row: the run stages every line, then waits on this lock inside its one
        # transaction, and is killed there.
        blocker.execute("SELECT id FROM batchman.requests WHERE custom_id = %s FOR UPDATE", (ids[3],))
        proc = run_in_child("results_job", driver.db_url, sim, tmp_path, request.partition_key)
        try:
            wait_until(
                lambda: (
                    driver.query(
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )[0]["n"]
                    == 1
                ),
                "the results run waiting inside its transaction",
                proc,
            )
        finally:
            kill(proc)
        blocker.rollback()
    assert batch_row(driver)["state"] == "downloading"
    assert driver.query("SELECT count(*) AS n FROM batchman.requests WHERE result IS NOT NULL")[0]["n"] == 0

    make_stale(driver)
    driver.drive(stages=STAGES)  # the status sensor relaunches the stalled results run

    assert_results_stored_once(driver, sim, 4)
    codes = {
        r["custom_id"]: r["result"]["response"]["status_code"]
        for r in driver.query("SELECT custom_id, result FROM batchman.requests")
    }
    assert codes == {ids[0]: 200, ids[1]: 400, ids[2]: 200, ids[3]: 200}
