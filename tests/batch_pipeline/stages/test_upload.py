"""The upload stage against real Postgres and the simulator: lost answers, failures, overlapping runs.

``submit_batch`` is called as the upload op calls it, with the client the op gets (SDK retries on); a
transient error is what makes the op's RetryPolicy run it again, which a test does by calling it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dagster as dg
import openai
import pytest

from batch_pipeline import openai_call_figures as figures
from batch_pipeline import openai_client as oai
from batch_pipeline.config import Settings
from batch_pipeline.stages import upload
from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.status import PollSettings, poll_due
from batch_pipeline.stages.upload import SubmitResult, submit_batch
from tests.dagster_instance import dagster_test_instance


def submit(connector: Callable[[], Any], client: openai.OpenAI, batch_id: int) -> SubmitResult:
    return submit_batch(connector, client, batch_id, lambda model: 10**9, 0)


def carrying(sim: Any, batch_id: int) -> list[openai.types.Batch]:
    """The simulator's batches that carry our id in their metadata (newest first)."""
    return [b for b in sim.batches() if (b.metadata or {}).get(oai.METADATA_KEY) == str(batch_id)]


def create_unheard(sim: Any, connector: Callable[[], Any], client: openai.OpenAI, batch_id: int) -> Any:
    """Submit the batch while OpenAI creates it but the answer is lost; the OpenAI batch it made."""
    sim.faults(drop_response_next={"batches.create": 1})
    with pytest.raises(openai.APIConnectionError):
        submit(connector, client, batch_id)
    (first,) = carrying(sim, batch_id)
    return first


def batch_row(query: Callable[..., list[dict]], batch_id: int) -> dict[str, Any]:
    return query("SELECT * FROM batchman.batches WHERE id = %s", batch_id)[0]


def reasons(query: Callable[..., list[dict]], batch_id: int, to_state: str) -> list[str]:
    rows = query(
        "SELECT reason FROM batchman.batch_transitions WHERE batch_id = %s AND to_state = %s ORDER BY id",
        batch_id,
        to_state,
    )
    return [r["reason"] for r in rows]


# -- lost answers (the SDK must not repeat a create; our lookups find what it did) -----------------------


def test_a_lost_create_answer_is_adopted_and_nothing_is_created_twice(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(3)
    batch_id = open_batch()
    client = sim.pipeline_client(stage_settings)
    sim.faults(drop_response_next={"batches.create": 1})

    with pytest.raises(openai.APIConnectionError):  # the op's RetryPolicy takes over from here
        submit(connector, client, batch_id)
    row = batch_row(query, batch_id)
    assert (row["state"], row["openai_status"], row["openai_batch_id"]) == ("uploaded", "creating", None)

    result = submit(connector, client, batch_id)  # the op's retry

    (remote,) = carrying(sim, batch_id)  # the create ran once, and only once
    assert result == SubmitResult("submitted", openai_batch_id=remote.id)
    assert batch_row(query, batch_id)["openai_batch_id"] == remote.id
    assert sim.stats()["batches_by_metadata"][oai.METADATA_KEY] == {str(batch_id): 1}
    assert reasons(query, batch_id, "openai_processing") == [
        f"adopted OpenAI batch {remote.id} (its create answer was lost)"
    ]

    sim.advance(60)  # the simulator finishes the batch; the status and results stages take it on
    assert poll_due(connector, sim.client, PollSettings(0, (5.0,)), 10) == [batch_id]
    ingest_results(connector, sim.client, batch_id, max_resubmits=1)
    rows = query("SELECT state, result FROM batchman.requests ORDER BY id")
    assert [r["state"] for r in rows] == ["openai_processed"] * 3
    assert all(r["result"]["response"]["status_code"] == 200 for r in rows)


def test_a_first_upload_makes_only_the_two_creating_calls(
    sim, stage_settings: Settings, connector, add_requests, open_batch
) -> None:
    # No earlier attempt is recorded for the batch, so there is nothing to look up at OpenAI first: the
    # run makes the baseline's two calls. (A re-run does look: the lost-answer tests below.)
    add_requests(2)
    batch_id = open_batch()
    recorder = figures.CallRecorder()
    client = oai.sync_client(stage_settings, recorder=recorder)

    assert submit(connector, client, batch_id).outcome == "submitted"

    calls = {(row.operation, row.outcome): row.calls for row in recorder.take()}
    assert calls == {("files.create", "ok"): 1, ("batches.create", "ok"): 1}


def test_a_lost_upload_answer_is_adopted_and_the_file_is_not_uploaded_twice(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(2)
    batch_id = open_batch()
    client = sim.pipeline_client(stage_settings)
    sim.faults(drop_response_next={"files.create": 1})

    with pytest.raises(openai.APIConnectionError):
        submit(connector, client, batch_id)
    row = batch_row(query, batch_id)
    assert (row["state"], row["openai_input_file_id"]) == ("uploading", None)

    assert submit(connector, client, batch_id).outcome == "submitted"

    (stored,) = sim.client.files.list(purpose="batch").data
    assert stored.filename == oai.input_file_name(batch_id)
    assert batch_row(query, batch_id)["openai_input_file_id"] == stored.id
    (remote,) = carrying(sim, batch_id)
    assert remote.input_file_id == stored.id
    assert sim.stats()["files_uploaded"] == 1


def test_a_create_that_timed_out_but_happened_is_adopted(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(2)
    batch_id = open_batch()
    sim.faults(create_token_limit_refusals=1)  # first: uploaded, then refused; it waits for capacity
    assert submit(connector, sim.pipeline_client(stage_settings), batch_id).outcome == "waiting_for_capacity"
    # Admitted again, its create call runs at OpenAI but the answer comes after the client gave up.
    # (The simulator runs the call first and holds the answer back until the client hangs up.)
    sim.faults(slow_rate=1.0, slow_seconds=120)
    impatient = sim.pipeline_client(stage_settings, timeout=2.0)

    with pytest.raises(openai.APITimeoutError):
        submit(connector, impatient, batch_id)
    assert sim.stats()["batches_created"] == 1

    sim.faults(slow_rate=0.0)
    result = submit(connector, sim.pipeline_client(stage_settings), batch_id)

    (remote,) = carrying(sim, batch_id)
    assert result.openai_batch_id == remote.id == batch_row(query, batch_id)["openai_batch_id"]
    assert sim.stats()["batches_created"] == 1


def test_a_lost_create_answer_of_a_batch_that_failed_validation_is_adopted_not_created_again(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(2, faults={0: "invalid_line"})
    batch_id = open_batch()
    client = sim.pipeline_client(stage_settings)
    first = create_unheard(sim, connector, client, batch_id)
    sim.advance(60)  # validation is over before the op's retry: the batch failed at OpenAI
    assert sim.client.batches.retrieve(first.id).status == "failed"

    result = submit(connector, client, batch_id)

    assert result.openai_batch_id == first.id == batch_row(query, batch_id)["openai_batch_id"]
    assert sim.stats()["batches_created"] == 1


def test_a_batch_of_an_earlier_attempt_that_openai_ended_is_not_adopted(sim, open_batch) -> None:
    batch_id = open_batch()
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
    line += b'{"x_sim_fault": "invalid_line"}}'
    earlier = sim.client.batches.create(
        input_file_id=sim.client.files.create(file=("in.jsonl", line + b"\n"), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={oai.METADATA_KEY: str(batch_id), oai.ATTEMPT_KEY: "0"},
    )
    sim.advance(60)
    assert sim.client.batches.retrieve(earlier.id).status == "failed"
    # The same attempt on the same file: that failed batch is this attempt's own.
    assert [b.id for b in oai.find_batches(sim.client, batch_id, earlier.input_file_id, 0)] == [earlier.id]
    # A later attempt (after a token-limit backoff), or another file: it is history, not adopted.
    assert oai.find_batches(sim.client, batch_id, earlier.input_file_id, 1) == []
    assert oai.find_batches(sim.client, batch_id, "file-other", 0) == []
    assert oai.find_batches(sim.client, batch_id) == []


def test_duplicate_openai_batches_are_cancelled_and_the_kept_one_recorded(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(2)
    batch_id = open_batch()
    client = sim.pipeline_client(stage_settings)
    first = create_unheard(sim, connector, client, batch_id)
    # What an SDK retry of the lost create did before creates went out once: a second batch, unseen.
    repeat = sim.client.batches.create(
        input_file_id=first.input_file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={oai.METADATA_KEY: str(batch_id)},
    )

    result = submit(connector, client, batch_id)

    assert result.openai_batch_id == first.id == batch_row(query, batch_id)["openai_batch_id"]
    assert sim.client.batches.retrieve(repeat.id).status == "cancelling"
    assert sim.client.batches.retrieve(first.id).status == "validating"
    (reason,) = reasons(query, batch_id, "openai_processing")
    assert reason == (
        f"adopted OpenAI batch {first.id} (its create answer was lost); "
        f"cancelled duplicate OpenAI batches {repeat.id}"
    )


# -- failures ----------------------------------------------------------------------------------------


def run_upload_op(stage_settings: Settings, db_url: str, batch_id: int) -> dg.ExecuteInProcessResult:
    """The real upload op (its error mapping), run in process for one batch."""
    from batch_pipeline.defs.definitions import build_definitions

    defs = build_definitions(stage_settings, dsn=db_url)
    with dagster_test_instance() as instance:
        instance.add_dynamic_partitions("batches", [str(batch_id)])
        return defs.resolve_job_def("upload_job").execute_in_process(
            instance=instance, partition_key=str(batch_id), raise_on_error=False
        )


def assert_every_request_gets_the_error(
    sim, stage_settings: Settings, connector, query, batch_id: int, message_part: str
) -> None:
    """A batch refused for good ends like one OpenAI failed: each request's result is the error line,
    ready for delivery (no client waits for a batch nobody will run)."""
    row = batch_row(query, batch_id)
    assert (row["state"], row["openai_status"]) == ("openai_completed", "failed")
    assert {r["state"] for r in query("SELECT state FROM batchman.requests")} == {"openai_processing"}
    summary = ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=3)
    assert summary["outcome"] == "stored"
    assert batch_row(query, batch_id)["state"] == "ready_to_deliver"
    requests = query("SELECT custom_id, state, result FROM batchman.requests ORDER BY id")
    assert requests and {r["state"] for r in requests} == {"openai_processed"}
    for r in requests:
        assert r["result"]["custom_id"] == r["custom_id"] and r["result"]["response"] is None
        assert message_part in r["result"]["error"]["message"]


def test_a_permanent_upload_error_delivers_openais_message_to_every_request(
    sim, stage_settings: Settings, db_url: str, connector, query, add_requests, open_batch
) -> None:
    add_requests(2, faults={1: "no_such_fault"})  # the simulator refuses the whole file (HTTP 400)
    batch_id = open_batch()

    result = run_upload_op(stage_settings, db_url, batch_id)

    assert result.success and result.output_for_node("submit_to_openai") == "failed"
    row = batch_row(query, batch_id)
    assert row["error_msg"].startswith("OpenAI 400: ") and "unknown x_sim_fault value" in row["error_msg"]
    assert "Error code: 400" not in row["error_msg"]  # OpenAI's message, not the SDK's wrapper text
    assert sim.stats()["files_uploaded"] == 0 and sim.stats()["batches_created"] == 0
    assert_every_request_gets_the_error(
        sim, stage_settings, connector, query, batch_id, "unknown x_sim_fault"
    )


def test_a_permanent_create_error_delivers_openais_message_to_every_request(
    sim, stage_settings: Settings, db_url: str, connector, query, add_requests, open_batch
) -> None:
    add_requests(2)
    batch_id = open_batch()
    sim.faults(create_token_limit_refusals=1)
    assert submit(connector, sim.pipeline_client(stage_settings), batch_id).outcome == "waiting_for_capacity"
    # Its input file is now one OpenAI will not make a batch of: the create call is refused with 400.
    wrong = sim.upload("notes.jsonl", b"{}\n", purpose="user_data")
    query("UPDATE batchman.batches SET openai_input_file_id = %s RETURNING id", wrong)

    result = run_upload_op(stage_settings, db_url, batch_id)

    assert result.success and result.output_for_node("submit_to_openai") == "failed"
    row = batch_row(query, batch_id)
    assert (
        row["error_msg"]
        == f"OpenAI 400: File {wrong} has purpose 'user_data'; a batch needs purpose 'batch'."
    )
    assert sim.stats()["batches_created"] == 0
    assert_every_request_gets_the_error(
        sim, stage_settings, connector, query, batch_id, "purpose 'user_data'"
    )


def test_a_batch_with_nothing_left_to_send_is_resubmitted_without_calling_openai(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    from batch_pipeline.store.batching import fill_batch

    add_requests(2)
    batch_id = open_batch()
    with connector() as conn:  # cut, and then its requests are cancelled through the API
        fill_batch(conn, batch_row(query, batch_id), upload.DEFAULT_LIMITS, 10**9)
        conn.execute("UPDATE batchman.requests SET state = 'cancelled'")
        conn.commit()

    result = submit(connector, sim.pipeline_client(stage_settings), batch_id)

    assert result.outcome == "skipped" and "no pending requests" in result.detail
    row = batch_row(query, batch_id)
    assert (row["state"], row["openai_input_file_id"]) == ("resubmitted", None)
    assert row["completed_at"] is not None
    assert sim.stats()["files_uploaded"] == 0


def test_a_transient_create_error_then_the_retry_creates_one_batch(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    add_requests(2)
    batch_id = open_batch()
    client = sim.faulty_client(stage_settings, "POST", "/v1/batches", "500")  # the first create fails

    with pytest.raises(openai.InternalServerError):
        submit(connector, client, batch_id)
    row = batch_row(query, batch_id)
    assert (row["state"], row["openai_status"]) == ("uploaded", "creating")
    assert sim.stats()["batches_created"] == 0

    result = submit(connector, client, batch_id)  # the op's retry: nothing to adopt, so it creates

    (remote,) = carrying(sim, batch_id)
    assert result == SubmitResult("submitted", openai_batch_id=remote.id)
    assert batch_row(query, batch_id)["state"] == "openai_processing"
    assert reasons(query, batch_id, "openai_processing") == [f"created OpenAI batch {remote.id}"]
    assert sim.stats()["batches_created"] == 1 and sim.stats()["files_uploaded"] == 1


def test_two_upload_runs_of_one_batch_at_once_create_one_batch_from_one_upload(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch, monkeypatch
) -> None:
    add_requests(3)
    batch_id = open_batch()
    finished = threading.Event()
    uploads: list[int] = []
    real_upload = upload.oai.upload_input_file

    def first_upload_waits_for_the_other_run(*args: Any) -> Any:
        # The run that uploads first holds still until the other run has finished: without the
        # per-batch lock, that one would see no input file yet and upload (and create) on its own.
        uploads.append(1)
        if len(uploads) == 1:
            assert finished.wait(timeout=30), "the other run never finished"
        return real_upload(*args)

    monkeypatch.setattr(upload.oai, "upload_input_file", first_upload_waits_for_the_other_run)
    results: list[SubmitResult | BaseException] = []

    def run() -> None:
        try:
            results.append(submit(connector, sim.pipeline_client(stage_settings), batch_id))
        except BaseException as exc:  # reported below, not lost in the thread
            results.append(exc)
        finally:
            finished.set()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(r.outcome for r in results) == ["skipped", "submitted"], results  # type: ignore[union-attr]
    (remote,) = carrying(sim, batch_id)
    assert batch_row(query, batch_id)["openai_batch_id"] == remote.id
    assert sim.stats()["files_uploaded"] == 1
    assert len(reasons(query, batch_id, "openai_processing")) == 1
    assert query("SELECT DISTINCT state FROM batchman.requests") == [{"state": "openai_processing"}]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_api_key_makes_the_batch_wait_instead_of_failing_its_requests(
    status: int, settings_factory, db_url: str, query, add_requests, open_batch
) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refusing(BaseHTTPRequestHandler):
        """OpenAI as it answers a revoked or wrong key: every call refused."""

        def _refuse(self) -> None:
            body = json.dumps({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = _refuse

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        add_requests(2)
        batch_id = open_batch()
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        settings = settings_factory(
            database_url=db_url, openai_base_url=base_url, openai_api_key="sk-revoked"
        )
        result = run_upload_op(settings, db_url, batch_id)
    finally:
        server.shutdown()

    assert result.success and result.output_for_node("submit_to_openai") == "waiting_for_credentials"
    row = batch_row(query, batch_id)
    assert (row["state"], row["capacity_wait_reason"]) == ("waiting_for_capacity", "openai_unauthorized")
    assert row["next_check_at"] is not None and row["error_msg"] is None
    # Its requests are untouched: they go out once the key is fixed.
    assert {r["state"] for r in query("SELECT state FROM batchman.requests")} == {"pending"}
    (moved,) = query("SELECT reason FROM batchman.batch_transitions WHERE to_state = 'waiting_for_capacity'")
    assert f"OpenAI {status}: Incorrect API key provided" in moved["reason"]
