"""The cleanup job in process against Postgres and the simulator: OpenAI files of finished batches,
retention of batches with their requests and attempts, the batches' dynamic partitions, and the
retention of Dagster's own finished runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import dagster as dg
import openai
import psycopg
import pytest

# Dagster refuses a QUEUED run without the origin of its job (where the daemon would load it from).
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from psycopg.rows import dict_row

from batch_pipeline.config import Settings
from batch_pipeline.db import connect
from batch_pipeline.defs.cleanup import delete_old_runs, remove_orphan_partitions
from batch_pipeline.defs.definitions import build_definitions
from batch_pipeline.stages.cleanup import delete_expired
from batch_pipeline.states import FILES_NOT_NEEDED, FINISHED
from tests.dagster_instance import dagster_test_instance

# Never deleted, whatever their age: OpenAI or the deliverer may still act on them.
IN_FLIGHT = (
    "ready",
    "uploading",
    "uploaded",
    "waiting_for_capacity",
    "openai_processing",
    "openai_completed",
    "downloading",
    "cancelling",
    "ready_to_deliver",
    "delivering",
)
# A valid batch input line: the simulator checks what is uploaded with purpose "batch".
LINE = json.dumps(
    {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "hi"},
    }
)
DELIVERY = json.dumps({"type": "rabbitmq", "rabbitmq_queue": "results"})

INSERT_BATCH = """
INSERT INTO batchman.batches (endpoint, model, state, openai_input_file_id, openai_output_file_id,
                              completed_at, updated_at, created_at)
VALUES ('/v1/responses', 'gpt-4o-mini', %(state)s, %(input)s, %(output)s,
        now() - make_interval(days => %(completed)s), now() - make_interval(days => %(updated)s),
        now() - make_interval(days => %(updated)s))
RETURNING id
"""
INSERT_REQUEST = """
INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,
                               delivery_config, state, batch_id)
VALUES (%s, '/v1/responses', 'gpt-4o-mini', %s, %s, 10, %s, 'delivered', %s)
RETURNING id
"""
INSERT_ATTEMPT = """
INSERT INTO batchman.delivery_attempts (request_id, delivery_config, outcome) VALUES (%s, %s, 'success')
"""
INSERT_TRANSITION = "INSERT INTO batchman.batch_transitions (batch_id, to_state) VALUES (%s, %s)"


@pytest.fixture
def pipeline_settings(pipeline_settings: Settings) -> Settings:
    # No RabbitMQ in these tests: a result bound for a queue fails its delivery at once (final)
    # instead of waiting for a retry, so a driven batch reaches a final delivery state.
    return pipeline_settings.model_copy(update={"disable_delivery_retry": True})


def run_cleanup(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    result = defs.resolve_job_def("cleanup_job").execute_in_process(instance=instance)
    assert result.success


def upload(sim) -> str:
    return sim.client.files.create(file=("batch.jsonl", (LINE + "\n").encode()), purpose="batch").id


def at_openai(sim, file_id: str) -> bool:
    try:
        sim.client.files.retrieve(file_id)
    except openai.NotFoundError:
        return False
    return True


def seed(
    db_url: str,
    sim,
    state: str,
    completed_days: int | None = 0,
    updated_days: int | None = None,
    files: bool = True,
    requests: int = 2,
) -> dict[str, Any]:
    """A batch row in ``state`` with OpenAI files, requests, delivery attempts and a transition.

    ``completed_days``/``updated_days``: how long ago it completed / last changed (None: never
    completed; updated defaults to the completion time)."""
    file_ids = (upload(sim), upload(sim)) if files else (None, None)
    params = {
        "state": state,
        "input": file_ids[0],
        "output": file_ids[1],
        "completed": completed_days,
        "updated": updated_days if updated_days is not None else completed_days or 0,
    }
    with psycopg.connect(db_url) as conn:
        (batch_id,) = conn.execute(INSERT_BATCH, params).fetchone()
        for i in range(requests):
            (request_id,) = conn.execute(
                INSERT_REQUEST, (f"b{batch_id}-{i}", LINE, len(LINE), DELIVERY, batch_id)
            ).fetchone()
            conn.execute(INSERT_ATTEMPT, (request_id, DELIVERY))
        conn.execute(INSERT_TRANSITION, (batch_id, state))
    return {"id": batch_id, "state": state, "files": [f for f in file_ids if f]}


def query(db_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def batch_ids(db_url: str) -> set[int]:
    return {r["id"] for r in query(db_url, "SELECT id FROM batchman.batches")}


def rows_of(db_url: str, batch_id: int) -> dict[str, int]:
    """How many requests, delivery attempts and transitions a batch still has."""
    return query(
        db_url,
        "SELECT (SELECT count(*) FROM batchman.requests WHERE batch_id = %s) AS requests,"
        " (SELECT count(*) FROM batchman.delivery_attempts a JOIN batchman.requests r"
        "  ON r.id = a.request_id WHERE r.batch_id = %s) AS attempts,"
        " (SELECT count(*) FROM batchman.batch_transitions WHERE batch_id = %s) AS transitions",
        batch_id,
        batch_id,
        batch_id,
    )[0]


def partitions(driver) -> set[str]:
    return set(driver.instance.get_dynamic_partitions("batches"))


def snapshot(driver) -> dict[str, Any]:
    return {
        "batches": query(driver.db_url, "SELECT * FROM batchman.batches ORDER BY id"),
        "requests": query(driver.db_url, "SELECT count(*) AS n FROM batchman.requests"),
        "attempts": query(driver.db_url, "SELECT count(*) AS n FROM batchman.delivery_attempts"),
        "partitions": partitions(driver),
        "openai_calls": driver.sim.stats()["http_requests"],
    }


def test_a_delivered_pipeline_batch_gets_completed_at_and_loses_its_openai_files(
    driver, sim, add_requests
) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    driver.drive()
    (batch,) = driver.query("SELECT * FROM batchman.batches")
    assert batch["state"] == "delivery_failed"  # no RabbitMQ here, no retries
    assert batch["completed_at"] is not None  # set by the final delivery transition
    files = [batch["openai_input_file_id"], batch["openai_output_file_id"]]
    assert all(files) and all(at_openai(sim, f) for f in files)

    run_cleanup(driver.defs, driver.instance)
    (after,) = driver.query("SELECT * FROM batchman.batches")
    assert after["files_deleted_at"] is not None
    assert not any(at_openai(sim, f) for f in files)
    assert sim.stats()["files_deleted"] == 2
    assert rows_of(driver.db_url, batch["id"])["requests"] == 3  # recent: kept
    assert partitions(driver) == {str(batch["id"])}


def test_files_of_every_finished_batch_go_and_in_flight_batches_keep_theirs(driver, sim) -> None:
    done = [seed(driver.db_url, sim, state) for state in FILES_NOT_NEEDED]
    assert {"failed", "cancelled", "resubmitted", "partially_delivered"} <= {b["state"] for b in done}
    busy = [seed(driver.db_url, sim, state) for state in IN_FLIGHT if state not in FILES_NOT_NEEDED]

    run_cleanup(driver.defs, driver.instance)
    deleted_at = {
        r["id"]: r["files_deleted_at"]
        for r in driver.query("SELECT id, files_deleted_at FROM batchman.batches")
    }
    for b in done:
        assert deleted_at[b["id"]] is not None, b["state"]
        assert not any(at_openai(sim, f) for f in b["files"]), b["state"]
    for b in busy:
        assert deleted_at[b["id"]] is None, b["state"]
        assert all(at_openai(sim, f) for f in b["files"]), b["state"]
    assert sim.stats()["files_deleted"] == 2 * len(done)
    assert set(deleted_at) == {b["id"] for b in done + busy}  # all recent: none deleted


def test_openai_delete_files_false_keeps_the_files(driver, sim, pipeline_settings, db_url) -> None:
    defs = build_definitions(pipeline_settings.model_copy(update={"openai_delete_files": False}), dsn=db_url)
    recent = seed(db_url, sim, "delivered")
    old = seed(db_url, sim, "failed", completed_days=40)

    run_cleanup(defs, driver.instance)
    assert sim.stats()["files_deleted"] == 0
    assert all(at_openai(sim, f) for f in recent["files"] + old["files"])
    assert query(db_url, "SELECT files_deleted_at FROM batchman.batches") == [{"files_deleted_at": None}]
    assert batch_ids(db_url) == {recent["id"]}  # retention applies all the same


def test_retention_deletes_finished_batches_with_their_rows_and_never_in_flight_ones(driver, sim) -> None:
    db = driver.db_url
    expired = [seed(db, sim, state, completed_days=31) for state in FINISHED]
    # No completion time recorded: the last change counts.
    expired.append(seed(db, sim, "delivered", completed_days=None, updated_days=31))
    kept = [
        seed(db, sim, "delivered", completed_days=29),
        # Completed recently: an old updated_at does not matter.
        seed(db, sim, "failed", completed_days=1, updated_days=90),
        *(seed(db, sim, state, completed_days=400, files=False) for state in IN_FLIGHT),
        *(seed(db, sim, state, completed_days=None, updated_days=400, files=False) for state in IN_FLIGHT),
    ]
    driver.instance.add_dynamic_partitions("batches", [str(b["id"]) for b in expired + kept])

    run_cleanup(driver.defs, driver.instance)
    assert batch_ids(db) == {b["id"] for b in kept}
    for b in expired:
        assert rows_of(db, b["id"]) == {"requests": 0, "attempts": 0, "transitions": 0}, b["state"]
        assert not any(at_openai(sim, f) for f in b["files"]), b["state"]  # nothing orphaned
    for b in kept:
        assert rows_of(db, b["id"]) == {"requests": 2, "attempts": 2, "transitions": 1}, b["state"]
    assert partitions(driver) == {str(b["id"]) for b in kept}

    before = snapshot(driver)
    run_cleanup(driver.defs, driver.instance)
    assert snapshot(driver) == before  # a second run changes nothing and calls OpenAI for nothing


def test_orphan_partitions_are_removed_whoever_deleted_the_batch(driver, sim) -> None:
    db = driver.db_url
    a, b, c = (seed(db, sim, "delivered", files=False) for _ in range(3))
    keys = [str(x["id"]) for x in (a, b, c)]
    # Batch c deleted through the API (or by a run that crashed before its partition delete), and
    # keys that never were batches.
    query(db, "DELETE FROM batchman.batches WHERE id = %s RETURNING id", c["id"])
    driver.instance.add_dynamic_partitions("batches", [*keys, "999", "0042", "not-a-batch"])

    run_cleanup(driver.defs, driver.instance)
    assert partitions(driver) == {str(a["id"]), str(b["id"])}
    assert batch_ids(db) == {a["id"], b["id"]}


def test_partition_reconciliation_is_bounded_per_run(driver, sim) -> None:
    live = seed(driver.db_url, sim, "delivered", files=False)
    orphans = [str(n) for n in range(1000, 1007)]
    driver.instance.add_dynamic_partitions("batches", [str(live["id"]), *orphans])
    connect_db = partial(connect, driver.db_url)

    assert remove_orphan_partitions(driver.instance, connect_db, chunk=3, limit=5) == 5
    assert len(partitions(driver)) == 3
    assert remove_orphan_partitions(driver.instance, connect_db, chunk=3, limit=5) == 2
    assert partitions(driver) == {str(live["id"])}


def test_a_batch_whose_files_cannot_be_deleted_is_kept_until_they_are(driver, sim) -> None:
    batch = seed(driver.db_url, sim, "failed", completed_days=40)
    connect_db = partial(connect, driver.db_url)

    sim.faults(http_500_rate=1.0)
    try:
        assert delete_expired(connect_db, 30, sim.client) == []
    finally:
        sim.faults(http_500_rate=0.0)
    assert batch_ids(driver.db_url) == {batch["id"]}
    assert all(at_openai(sim, f) for f in batch["files"])

    assert delete_expired(connect_db, 30, sim.client) == [batch["id"]]
    assert batch_ids(driver.db_url) == set()
    assert not any(at_openai(sim, f) for f in batch["files"])


# --- Dagster runs ---------------------------------------------------------------------------------


@dg.op
def say_hello() -> None:
    print("hello")  # captured: the run gets compute logs


@dg.op
def fail() -> None:
    raise RuntimeError("boom")


@dg.job(executor_def=dg.in_process_executor)
def hello_job() -> None:
    say_hello()


@dg.job(executor_def=dg.in_process_executor)
def failing_job() -> None:
    fail()


# The events that move a run into each state that is not over (no event: NOT_STARTED).
IN_PROGRESS_EVENTS = {
    dg.DagsterRunStatus.NOT_STARTED: [],
    dg.DagsterRunStatus.QUEUED: [dg.DagsterEventType.RUN_ENQUEUED],
    dg.DagsterRunStatus.STARTING: [dg.DagsterEventType.RUN_STARTING],
    dg.DagsterRunStatus.STARTED: [dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_START],
    dg.DagsterRunStatus.CANCELING: [dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_CANCELING],
}


HELLO_ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=RegisteredCodeLocationOrigin("tests"), repository_name="__repository__"
    ),
    job_name="hello_job",
)


def run_in_progress(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run = instance.create_run_for_job(
        hello_job, status=dg.DagsterRunStatus.NOT_STARTED, remote_job_origin=HELLO_ORIGIN
    )
    for event_type in IN_PROGRESS_EVENTS[status]:
        event = dg.DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)
        instance.report_dagster_event(event, run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == status
    return run.run_id


def finished_runs(instance: dg.DagsterInstance) -> list[str]:
    """One successful, one failed and one canceled run; their ids."""
    ok = hello_job.execute_in_process(instance=instance).run_id
    failed = failing_job.execute_in_process(instance=instance, raise_on_error=False).run_id
    canceled = instance.create_run_for_job(hello_job, status=dg.DagsterRunStatus.NOT_STARTED)
    instance.report_run_canceled(canceled)
    statuses = [instance.get_run_by_id(r).status for r in (ok, failed, canceled.run_id)]
    assert statuses == [
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ]
    return [ok, failed, canceled.run_id]


def last_update(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> list[datetime]:
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=list(run_ids)))
    return [r.update_timestamp for r in records]


def compute_log_keys(instance: dg.DagsterInstance, run_id: str) -> list[Sequence[str]]:
    """The keys of the compute logs a run captured and that are still stored."""
    manager = instance.compute_log_manager
    keys = [
        manager.build_log_key_for_run(run_id, e.dagster_event.logs_captured_data.file_key)
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
    ]
    return [k for k in keys if manager.is_capture_complete(k)]


def test_dagster_runs_finished_past_retention_go_with_their_logs_and_others_stay() -> None:
    with dagster_test_instance() as instance:
        # Oldest of all, yet never deleted: queued, starting or in progress.
        busy = [run_in_progress(instance, status) for status in IN_PROGRESS_EVENTS]
        old = finished_runs(instance)
        new = finished_runs(instance)
        # "now" is retention days after a moment between the old runs' ends and the new ones'.
        last_old, first_new = max(last_update(instance, old)), min(last_update(instance, new))
        assert last_old < first_new
        now = last_old + (first_new - last_old) / 2 + timedelta(days=30)
        old_logs = {r: compute_log_keys(instance, r) for r in old}
        assert old_logs[old[0]] and old_logs[old[1]]  # the executed ones captured stdout/stderr
        assert all(instance.all_logs(r) for r in old)

        assert delete_old_runs(instance, 30, now=now) == 3
        for run_id in old:
            assert instance.get_run_by_id(run_id) is None
            assert instance.all_logs(run_id) == []
            assert compute_log_keys(instance, run_id) == []
            assert not any(instance.compute_log_manager.is_capture_complete(k) for k in old_logs[run_id])
        for run_id in busy + new:
            assert instance.get_run_by_id(run_id) is not None
        for run_id in new + busy[1:]:  # (a NOT_STARTED run has no events)
            assert instance.all_logs(run_id)
        assert compute_log_keys(instance, new[0])

        # A day later the new ones are past retention too; never the in-progress ones.
        assert delete_old_runs(instance, 30, now=now + timedelta(days=1)) == 3
        assert {r.dagster_run.run_id for r in instance.get_run_records()} == set(busy)
        assert delete_old_runs(instance, 1, now=now + timedelta(days=1000)) == 0


def test_dagster_run_deletion_is_bounded_per_run_and_spares_the_given_run() -> None:
    with dagster_test_instance() as instance:
        runs = [hello_job.execute_in_process(instance=instance).run_id for _ in range(7)]
        now = max(last_update(instance, runs)) + timedelta(days=30, seconds=1)

        assert delete_old_runs(instance, 30, now=now, keep=runs[0], chunk=2, limit=5) == 5
        assert delete_old_runs(instance, 30, now=now, keep=runs[0], chunk=2, limit=5) == 1
        assert delete_old_runs(instance, 30, now=now, keep=runs[0], chunk=2, limit=5) == 0
        assert [r.dagster_run.run_id for r in instance.get_run_records()] == [runs[0]]


def test_the_cleanup_job_keeps_recent_runs_and_itself(driver) -> None:
    recent = hello_job.execute_in_process(instance=driver.instance).run_id
    run_cleanup(driver.defs, driver.instance)
    run_cleanup(driver.defs, driver.instance)
    kept = {r.dagster_run.run_id for r in driver.instance.get_run_records()}
    assert recent in kept
    assert len(kept) == 3  # the finished cleanup runs are recent too
