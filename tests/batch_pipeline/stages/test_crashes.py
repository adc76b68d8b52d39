"""Real crashes: the upload and results stages killed with SIGKILL at their worst moment, in a process of
their own, then run again as the op's retry or the sensor's relaunch would. Nothing is paid twice and
nothing is half-applied."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.upload import submit_batch
from tests.batch_pipeline.stages.test_results import submitted_and_finished

pytestmark = pytest.mark.process

# The child runs one stage for one batch with a plain SDK client (no retries), marking the calls to
# ``HOLD`` with the simulator's "slow" fault: the call is carried out, its answer held back.
CHILD = """
import sys
import openai
from batch_pipeline.db import connect
from batch_pipeline.simulator.faults import HTTP_FAULT_HEADER
from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.upload import submit_batch

stage, db_url, base_url, batch_id, hold = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]

def mark(request):
    if request.method == "POST" and request.url.path == hold:
        request.headers[HTTP_FAULT_HEADER] = "slow"

http = openai.DefaultHttpxClient(event_hooks={"request": [mark]})
client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=300, http_client=http)
if stage == "upload":
    submit_batch(lambda: connect(db_url), client, batch_id, lambda model: 10**9, 60)
else:
    ingest_results(lambda: connect(db_url), client, batch_id, 1)
"""
DEADLINE_SECONDS = 60


def child(stage: str, db_url: str, base_url: str, batch_id: int, hold: str = "-") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, stage, db_url, base_url, str(batch_id), hold],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], Any], what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the child ended before {what}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_SECONDS} s")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_killed_while_the_create_answer_is_on_its_way_the_rerun_adopts_the_batch(
    sim, stage_settings, db_url, connector, query, add_requests, open_batch
) -> None:
    add_requests(3)
    batch_id = open_batch()
    sim.faults(slow_seconds=300)
    proc = child("upload", db_url, sim.base_url, batch_id, hold="/v1/batches")
    try:
        # The batch exists at OpenAI, and we only hold the intent: the worst moment to die.
        wait_until(lambda: sim.stats()["batches_created"] == 1, "batch created at the simulator", proc)
        (row,) = query("SELECT state, openai_status, openai_batch_id FROM batchman.batches")
        assert (row["state"], row["openai_status"], row["openai_batch_id"]) == ("uploaded", "creating", None)
    finally:
        kill(proc)
    sim.faults(slow_seconds=0)

    result = submit_batch(connector, sim.pipeline_client(stage_settings), batch_id, lambda m: 10**9, 60)

    (remote,) = sim.batches()
    assert result.outcome == "submitted" and result.openai_batch_id == remote.id
    assert sim.stats()["batches_created"] == 1 and sim.stats()["files_uploaded"] == 1
    (row,) = query("SELECT state, openai_batch_id FROM batchman.batches")
    assert (row["state"], row["openai_batch_id"]) == ("openai_processing", remote.id)


def test_killed_in_the_middle_of_storing_results_nothing_is_half_applied(
    sim, stage_settings, db_url, connector, query, add_requests, open_batch
) -> None:
    batch_id = submitted_and_finished(sim, stage_settings, connector, add_requests, open_batch, n=4)
    with psycopg.connect(db_url) as blocker:
        # Hold one request row: the child stages every line (COPY), then waits on this lock inside its
        # one transaction, and is killed there.
        blocker.execute("SELECT id FROM batchman.requests WHERE custom_id = 'r-3' FOR UPDATE")
        proc = child("results", db_url, sim.base_url, batch_id)
        try:
            wait_until(
                lambda: (
                    query(
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

    # Postgres rolled the child's transaction back: no request moved, the batch waits in 'downloading'.
    assert {r["state"] for r in query("SELECT state FROM batchman.requests")} == {"openai_processing"}
    assert query("SELECT count(*) AS n FROM batchman.requests WHERE result IS NOT NULL")[0]["n"] == 0
    assert query("SELECT state FROM batchman.batches")[0]["state"] == "downloading"

    summary = ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, 1)

    assert summary["outcome"] == "stored"
    rows = query("SELECT state, result FROM batchman.requests")
    assert len(rows) == 4 and {r["state"] for r in rows} == {"openai_processed"}
    assert all(r["result"]["response"]["status_code"] == 200 for r in rows)
    assert query("SELECT state FROM batchman.batches")[0]["state"] == "ready_to_deliver"
