"""The status stage against real Postgres and the simulator: failed status checks and token-limit
retries running out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from batch_pipeline.config import Settings
from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.status import PollSettings, poll_due
from batch_pipeline.stages.upload import submit_batch


def submitted_batch(connector, client, add_requests, open_batch, prefix: str) -> int:
    """A batch of two requests, created at OpenAI by the upload stage."""
    add_requests(2, prefix=prefix)
    batch_id = open_batch()
    assert submit_batch(connector, client, batch_id, lambda model: 10**9, 0).outcome == "submitted"
    return batch_id


def rows_by_id(query: Callable[..., list[dict]]) -> dict[int, dict[str, Any]]:
    rows = query(
        "SELECT id, state, openai_status, next_check_at > now() + interval '200 seconds' AS postponed"
        " FROM batchman.batches"
    )
    return {r["id"]: r for r in rows}


@pytest.mark.parametrize("failure", ["unknown batch id", "HTTP 500"])
def test_a_failed_status_check_postpones_that_batch_and_the_others_are_still_polled(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch, failure: str
) -> None:
    client = sim.pipeline_client(stage_settings)
    broken = submitted_batch(connector, client, add_requests, open_batch, "a")  # polled first
    healthy = submitted_batch(connector, client, add_requests, open_batch, "b")
    sim.advance(60)  # both are finished at OpenAI
    if failure == "unknown batch id":
        query("UPDATE batchman.batches SET openai_batch_id = 'batch_gone' WHERE id = %s RETURNING id", broken)
        poller = sim.pipeline_client(stage_settings, max_retries=1)
    else:
        (remote,) = query("SELECT openai_batch_id FROM batchman.batches WHERE id = %s", broken)
        # As the status sensor's client (one SDK retry): both attempts get a 500.
        path = f"/v1/batches/{remote['openai_batch_id']}"
        poller = sim.faulty_client(stage_settings, "GET", path, "500", times=2, max_retries=1)
    poll = PollSettings(interval_seconds=300, token_limit_backoff=(5.0,))

    assert poll_due(connector, poller, poll, limit=10) == [healthy]

    rows = rows_by_id(query)
    assert (rows[broken]["state"], rows[broken]["openai_status"]) == ("openai_processing", "validating")
    assert rows[broken]["postponed"]  # checked again at the next interval, not at the next tick
    assert rows[healthy]["state"] == "openai_completed"
    # Due again only after the interval: an immediate second pass leaves it alone.
    assert poll_due(connector, sim.pipeline_client(stage_settings), poll, limit=10) == []
    assert rows_by_id(query)[broken]["state"] == "openai_processing"


def test_token_limit_retries_running_out_give_every_request_an_error_line(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    sim.faults(token_limits={"gpt-4o-mini": 1})  # every batch of the model fails at OpenAI
    client = sim.pipeline_client(stage_settings)
    poll = PollSettings(interval_seconds=0, token_limit_backoff=(5.0,))  # one retry, after 5 minutes
    batch_id = submitted_batch(connector, client, add_requests, open_batch, "r")

    sim.advance(60)
    assert poll_due(connector, client, poll, limit=10) == []  # failed at OpenAI: it waits, then goes again
    (row,) = query("SELECT state, token_limit_retries FROM batchman.batches")
    assert (row["state"], row["token_limit_retries"]) == ("waiting_for_capacity", 1)
    assert submit_batch(connector, client, batch_id, lambda model: 10**9, 0).outcome == "submitted"
    sim.advance(60)
    assert poll_due(connector, client, poll, limit=10) == [batch_id]  # failed again: retries spent

    (row,) = query("SELECT state, openai_status, error_msg FROM batchman.batches")
    assert (row["state"], row["openai_status"]) == ("openai_completed", "failed")
    assert row["error_msg"].startswith("OpenAI token limit retries exhausted after 1 attempts: ")
    assert sim.stats()["batches_created"] == 2

    ingest_results(connector, client, batch_id, max_resubmits=1)

    (row,) = query("SELECT state FROM batchman.batches")
    assert row["state"] == "ready_to_deliver"
    requests = query("SELECT state, result, error_msg, next_attempt_at FROM batchman.requests")
    assert len(requests) == 2
    for request in requests:
        assert request["state"] == "openai_processed" and request["next_attempt_at"] is not None
        assert request["result"]["response"] is None
        assert request["result"]["error"]["code"] == "token_limit_exceeded"
        assert request["error_msg"].startswith("token_limit_exceeded: Enqueued token limit reached")


def test_a_batch_leaving_openai_brings_the_check_of_batches_waiting_for_its_headroom_forward(
    sim, stage_settings: Settings, connector, query, add_requests, open_batch
) -> None:
    client = sim.pipeline_client(stage_settings)
    done = submitted_batch(connector, client, add_requests, open_batch, "a")
    waiting, handed_on, other_model = (
        query(
            "INSERT INTO batchman.batches (endpoint, model, state, capacity_wait_reason, next_check_at)"
            " VALUES ('/v1/chat/completions', %s, 'waiting_for_capacity', 'insufficient_headroom',"
            " now() + make_interval(secs => %s)) RETURNING id",
            model,
            seconds,
        )[0]["id"]
        for model, seconds in (("gpt-4o-mini", 10), ("gpt-4o-mini", 300), ("gpt-4.1", 10))
    )
    sim.advance(60)

    assert poll_due(connector, client, PollSettings(300, (5.0,)), limit=10) == [done]

    due = {
        r["id"]: r["due"]
        for r in query("SELECT id, next_check_at <= now() AS due FROM batchman.batches WHERE id <> %s", done)
    }
    # The one of the same model in its 10 s checks is due now; the one already handed to an upload
    # run (checked minutes ahead) and the other model's stay as they were.
    assert due == {waiting: True, handed_on: False, other_model: False}
