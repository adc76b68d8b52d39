"""The results stage against a real Postgres (and the simulator): line classification, awkward result
files, failed downloads, and resubmissions running out."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import psycopg
import pytest

from batch_pipeline import openai_client as oai
from batch_pipeline.db import connect
from batch_pipeline.intake.validation import Limits, validate_request
from batch_pipeline.stages.results import _store, classify, ingest_results
from batch_pipeline.stages.status import PollSettings, poll_due
from batch_pipeline.stages.upload import submit_batch
from batch_pipeline.store.request_inserts import COPY_REQUESTS, copy_row


def line(custom_id: str, status: int = 200, error: dict | None = None, content: str = "ok") -> dict:
    body = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    response = None if error else {"status_code": status, "request_id": "req_1", "body": body}
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": error}


@pytest.mark.parametrize(
    ("entry", "expired", "kind"),
    [
        (line("a"), False, "ok"),
        (line("a", status=400), False, "failed"),
        (line("a", status=500), False, "retry"),
        (line("a", error={"code": "request_timeout", "message": "slow"}), False, "retry"),
        (line("a", error={"code": "batch_expired", "message": "late"}), False, "retry"),
        (line("a", error={"code": "batch_cancelled", "message": "x"}), True, "retry"),
        (line("a", error={"code": "batch_cancelled", "message": "x"}), False, "failed"),
        (line("a", error={"code": "invalid_request", "message": "bad"}), False, "failed"),
    ],
)
def test_classify(entry: dict, expired: bool, kind: str) -> None:
    assert classify(entry, expired)[0] == kind


def _batch_in_flight(db_url: str, custom_ids: list[str]) -> dict:
    """A batch whose requests OpenAI has finished, as the status sensor leaves it."""
    with connect(db_url) as conn:
        batch = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state, openai_status, request_count)"
            " VALUES ('/v1/chat/completions', 'gpt-4o-mini', 'downloading', 'completed', %s) RETURNING *",
            (len(custom_ids),),
        ).fetchone()
        rows = [
            validate_request(
                {
                    "custom_id": cid,
                    "url": "/v1/chat/completions",
                    "method": "POST",
                    "body": {"model": "gpt-4o-mini", "messages": []},
                    "delivery_config": {"type": "webhook", "webhook_url": "https://example.com/h"},
                },
                Limits(),
            )
            for cid in custom_ids
        ]
        with conn.cursor().copy(COPY_REQUESTS) as copy:
            for r in rows:
                copy.write_row(copy_row(r))
        conn.execute(
            "UPDATE batchman.requests SET state = 'openai_processing', batch_id = %s", (batch["id"],)
        )
        conn.commit()
    return batch


def test_store_keeps_lines_postgres_jsonb_would_refuse(db_url: str, tmp_path: Path) -> None:
    batch = _batch_in_flight(db_url, ["nul", "plain", "unanswered"])
    out = tmp_path / "out.jsonl"
    out.write_text(
        json.dumps(line("nul", content="a\u0000b"))
        + "\n"  # json.dumps writes the \u0000 escape
        + "{not json\n"
        + "\n"
        + json.dumps(line("plain"))
        + "\n"
    )
    summary = _store(lambda: connect(db_url), batch, [out], max_resubmits=1)

    assert summary == {"outcome": "stored", "processed": 2, "resubmitted": 1}
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute("SELECT custom_id, result FROM batchman.requests").fetchall())
        states = dict(conn.execute("SELECT custom_id, state FROM batchman.requests").fetchall())
    assert rows["nul"]["response"]["body"]["choices"][0]["message"]["content"] == "a\ufffdb"
    assert rows["plain"]["response"]["status_code"] == 200
    # No line came back for it (the malformed one is skipped): it goes into a new batch.
    assert states == {"nul": "openai_processed", "plain": "openai_processed", "unanswered": "pending"}


def test_store_twice_changes_nothing(db_url: str, tmp_path: Path) -> None:
    batch = _batch_in_flight(db_url, ["x"])
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(line("x")) + "\n")
    _store(lambda: connect(db_url), batch, [out], max_resubmits=1)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE batchman.batches SET state = 'downloading'")  # as a re-run would find it
        before = conn.execute("SELECT state, result, updated_at FROM batchman.requests").fetchall()
    summary = _store(lambda: connect(db_url), batch, [out], max_resubmits=1)
    with psycopg.connect(db_url) as conn:
        after = conn.execute("SELECT state, result, updated_at FROM batchman.requests").fetchall()
    assert summary["processed"] == 0 and before == after


# -- against the simulator: downloads that fail, files cut short or odd, resubmissions running out -------


def jsonl(*lines: dict) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def finished_at_openai(db_url: str, custom_ids: list[str], output_file_id: str | None) -> dict:
    """A batch the status stage has handed to the results stage, with ``output_file_id`` as its output."""
    batch = _batch_in_flight(db_url, custom_ids)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.batches SET state = 'openai_completed', openai_output_file_id = %s"
            " WHERE id = %s",
            (output_file_id, batch["id"]),
        )
    return batch


def requests_by_custom_id(query) -> dict[str, dict]:
    rows = query("SELECT custom_id, state, result, error_msg, resubmit_count FROM batchman.requests")
    return {r["custom_id"]: r for r in rows}


def submitted_and_finished(sim, stage_settings, connector, add_requests, open_batch, **kwargs) -> int:
    """Requests through the upload and status stages, finished at OpenAI: ready for the results run."""
    client = sim.pipeline_client(stage_settings)
    add_requests(**kwargs)
    batch_id = open_batch()
    assert submit_batch(connector, client, batch_id, lambda model: 10**9, 0).outcome == "submitted"
    sim.advance(60)
    assert poll_due(connector, client, PollSettings(0, (5.0,)), 10) == [batch_id]
    return batch_id


def test_a_failed_download_stores_nothing_and_a_later_run_stores_everything(
    sim, stage_settings, connector, query, add_requests, open_batch
) -> None:
    batch_id = submitted_and_finished(
        sim, stage_settings, connector, add_requests, open_batch, n=4, faults={3: "bad_request"}
    )
    (batch,) = query("SELECT openai_output_file_id, openai_error_file_id FROM batchman.batches")
    assert batch["openai_output_file_id"] and batch["openai_error_file_id"]
    # The output file downloads; the error file, second, answers 500 (after the SDK's own retry).
    error_content = f"/v1/files/{batch['openai_error_file_id']}/content"
    flaky = sim.faulty_client(stage_settings, "GET", error_content, "500", times=2, max_retries=1)

    with pytest.raises(openai.InternalServerError) as caught:
        ingest_results(connector, flaky, batch_id, max_resubmits=1)

    assert oai.is_transient(caught.value)  # the op's RetryPolicy runs it again
    (row,) = query("SELECT state FROM batchman.batches")
    assert row["state"] == "downloading"
    before = requests_by_custom_id(query)
    assert {r["state"] for r in before.values()} == {"openai_processing"}
    assert all(r["result"] is None for r in before.values())

    summary = ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)

    assert summary == {"outcome": "stored", "processed": 4, "resubmitted": 0}
    after = requests_by_custom_id(query)
    assert {cid: r["state"] for cid, r in after.items()} == {f"r-{i}": "openai_processed" for i in range(4)}
    assert after["r-3"]["result"]["response"]["status_code"] == 400
    assert all(after[f"r-{i}"]["result"]["response"]["status_code"] == 200 for i in range(3))
    assert query("SELECT state FROM batchman.batches")[0]["state"] == "ready_to_deliver"


def test_a_result_file_gone_at_openai_sends_its_requests_again(
    sim, stage_settings, connector, query, add_requests, open_batch
) -> None:
    batch_id = submitted_and_finished(
        sim, stage_settings, connector, add_requests, open_batch, n=3, faults={2: "bad_request"}
    )
    (batch,) = query("SELECT openai_output_file_id FROM batchman.batches")
    sim.http.post(f"/_sim/files/{batch['openai_output_file_id']}/expire").raise_for_status()

    summary = ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)

    # The output file's lines are lost: those requests go into a new batch; the error line is stored.
    assert summary == {"outcome": "stored", "processed": 1, "resubmitted": 2}
    rows = requests_by_custom_id(query)
    assert {cid: (r["state"], r["resubmit_count"]) for cid, r in rows.items()} == {
        "r-0": ("pending", 1),
        "r-1": ("pending", 1),
        "r-2": ("openai_processed", 0),
    }
    (reason,) = query("SELECT reason FROM batchman.batch_transitions WHERE to_state = 'ready_to_deliver'")
    assert (
        reason["reason"]
        == f"1 results stored (result files gone at OpenAI: {batch['openai_output_file_id']})"
    )


@pytest.mark.parametrize(
    ("resubmitted_before", "outcome"), [(0, "resubmitted"), (1, "resubmit_limit_reached")]
)
def test_a_truncated_output_file_stores_the_good_lines_and_the_cut_request_gets_an_outcome(
    sim, db_url, connector, query, resubmitted_before: int, outcome: str
) -> None:
    whole = jsonl(line("r-0"), line("r-1"))
    cut = json.dumps(line("r-2", content="a long answer"))[:-25]  # the file ends mid-line
    file_id = sim.upload("output.jsonl", whole + cut.encode())
    batch = finished_at_openai(db_url, ["r-0", "r-1", "r-2"], file_id)
    query("UPDATE batchman.requests SET resubmit_count = %s RETURNING id", resubmitted_before)

    summary = ingest_results(connector, sim.client, batch["id"], max_resubmits=1)

    rows = requests_by_custom_id(query)
    assert [rows[c]["result"]["response"]["status_code"] for c in ("r-0", "r-1")] == [200, 200]
    cut_request = rows["r-2"]
    if outcome == "resubmitted":  # no line came back for it: it goes into a new batch
        assert summary == {"outcome": "stored", "processed": 2, "resubmitted": 1}
        assert (cut_request["state"], cut_request["resubmit_count"]) == ("pending", 1)
    else:  # its resubmissions are spent: an error line says so, and it is delivered
        assert summary == {"outcome": "stored", "processed": 3, "resubmitted": 0}
        assert cut_request["state"] == "openai_processed"
        assert cut_request["result"]["error"]["code"] == "resubmit_limit_reached"
        assert cut_request["error_msg"] == "resubmit_limit_reached: no result after 1 resubmissions"


def test_duplicate_and_unknown_custom_ids_store_each_request_once(sim, db_url, connector, query) -> None:
    output = jsonl(
        line("r-0", status=500),  # a retryable line, and then a success for the same request
        line("r-0", content="the success"),
        line("r-1", content="first"),
        line("r-1", content="second"),
        line("not-ours", content="a stranger"),
    )
    batch = finished_at_openai(db_url, ["r-0", "r-1"], sim.upload("output.jsonl", output))

    summary = ingest_results(connector, sim.client, batch["id"], max_resubmits=1)

    assert summary == {"outcome": "stored", "processed": 2, "resubmitted": 0}
    rows = requests_by_custom_id(query)
    assert set(rows) == {"r-0", "r-1"}
    contents = {c: rows[c]["result"]["response"]["body"]["choices"][0]["message"]["content"] for c in rows}
    assert contents == {"r-0": "the success", "r-1": "first"}
    assert {r["state"] for r in rows.values()} == {"openai_processed"}
    assert query("SELECT state FROM batchman.batches")[0]["state"] == "ready_to_deliver"


def test_resubmissions_running_out_end_in_an_error_line(
    sim, stage_settings, connector, query, add_requests, open_batch
) -> None:
    """Twice no line comes back for the request (its output file is gone): with OPENAI_MAX_RESUBMITS=1
    it goes again once, then gets a resubmit_limit_reached error line. A retryable line of OpenAI's
    (here a 500) whose resubmissions are spent is stored and delivered as OpenAI wrote it."""
    kwargs = {"n": 2, "faults": {1: "server_error"}}
    for attempt in range(2):
        batch_id = submitted_and_finished(sim, stage_settings, connector, add_requests, open_batch, **kwargs)
        kwargs = {"n": 0}  # the second round sends the same requests again
        (batch,) = query("SELECT openai_output_file_id FROM batchman.batches WHERE id = %s", batch_id)
        sim.http.post(f"/_sim/files/{batch['openai_output_file_id']}/expire").raise_for_status()
        ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)
        if attempt == 0:
            rows = requests_by_custom_id(query)
            assert {c: (r["state"], r["resubmit_count"]) for c, r in rows.items()} == {
                "r-0": ("pending", 1),
                "r-1": ("pending", 1),
            }

    rows = requests_by_custom_id(query)
    assert {r["state"] for r in rows.values()} == {"openai_processed"}
    assert rows["r-0"]["result"]["error"]["code"] == "resubmit_limit_reached"
    assert rows["r-0"]["error_msg"] == "resubmit_limit_reached: no result after 1 resubmissions"
    assert rows["r-1"]["result"]["response"]["status_code"] == 500
    assert rows["r-1"]["error_msg"].startswith("server_error: ")
    assert sim.stats()["batches_created"] == 2
