"""A batch through the simulator (upload, status, results), then what the operator sees of it: the
usage OpenAI reported, priced, and its input/output/error files streamed through the API."""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from batch_pipeline.admin import files, usage
from batch_pipeline.admin.errors import FileNotAvailable
from batch_pipeline.pricing import cost, load_prices
from batch_pipeline.stages.results import ingest_results
from tests.batch_pipeline.admin.helpers import run
from tests.batch_pipeline.stages.test_results import submitted_and_finished
from tests.intake_api.conftest import serve


@pytest.fixture
def finished_batch(sim, stage_settings, connector, add_requests, open_batch) -> int:
    batch_id = submitted_and_finished(
        sim, stage_settings, connector, add_requests, open_batch, n=6, faults={5: "bad_request"}
    )
    ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)
    return batch_id


def test_reported_usage_of_a_finished_batch_is_priced(finished_batch, query, db_url) -> None:
    results = query("SELECT result FROM batchman.requests WHERE result IS NOT NULL")
    assert len(results) == 6
    lines = [
        r["result"]["response"]["body"] for r in results if r["result"]["response"]["status_code"] == 200
    ]
    assert len(lines) == 5
    prompt = sum(b["usage"]["prompt_tokens"] for b in lines)
    completion = sum(b["usage"]["completion_tokens"] for b in lines)

    figures = run(db_url, lambda c: usage.batch_cost(c, finished_batch))
    # What OpenAI reported for the batch is what its stored result lines add up to.
    assert figures["reported"] and figures["requests"] == 5
    assert (figures["input_tokens"], figures["output_tokens"]) == (prompt, completion)
    expected = cost(load_prices().for_model("gpt-4o-mini"), prompt, 0, completion)
    assert figures["batch_cost_usd"] == pytest.approx(expected.batch_usd, abs=1e-6)
    assert figures["savings_usd"] == pytest.approx(expected.savings_usd, abs=1e-6)
    (row,) = run(db_url, lambda c: usage.usage(c, "model"))
    assert (row["key"], row["input_tokens"], row["requests"]) == ("gpt-4o-mini", prompt, 5)


def test_files_stream_through_the_api_as_openai_has_them(
    finished_batch, sim, tmp_path, db_url, query
) -> None:
    (batch,) = query("SELECT * FROM batchman.batches WHERE id = %s", finished_batch)
    with serve(tmp_path, db_url, openai_base_url=sim.base_url) as client:
        for kind in ("input", "output", "error"):
            resp = client.get(f"/api/batches/{finished_batch}/files/{kind}")
            assert resp.status_code == 200, resp.text
            assert (
                resp.headers["content-disposition"]
                == f'attachment; filename="batch-{finished_batch}-{kind}.jsonl"'
            )
            assert resp.content == sim.client.files.content(batch[f"openai_{kind}_file_id"]).read()
            assert resp.content.count(b"\n") == {"input": 6, "output": 5, "error": 1}[kind]

        sim.client.files.delete(batch["openai_output_file_id"])  # as the cleanup stage does
        gone = client.get(f"/api/batches/{finished_batch}/files/output")
        assert gone.status_code == 409 and gone.json()["errors"][0]["code"] == "file_not_available"
        assert client.get("/api/batches/999999/files/output").status_code == 404
        assert client.get(f"/api/batches/{finished_batch}/files/other").status_code == 422
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE batchman.batches SET openai_error_file_id = NULL")
        none = client.get(f"/api/batches/{finished_batch}/files/error")
        assert none.status_code == 409 and "no error file" in none.json()["errors"][0]["detail"]


def test_a_large_file_comes_in_chunks(sim, stage_settings, db_url) -> None:
    content = b"".join(b'{"custom_id": "c-%06d", "pad": "%s"}\n' % (i, b"x" * 200) for i in range(5000))
    file_id = sim.upload("big.jsonl", content)
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state, openai_output_file_id)"
            " VALUES ('/v1/chat/completions', 'gpt-4o-mini', 'delivered', %s) RETURNING id",
            (file_id,),
        ).fetchone()[0]

    async def chunks() -> list[bytes]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            return [c async for c in files.batch_file_stream(stage_settings, conn, batch_id, "output")]

    got = asyncio.run(chunks())
    assert got[0] == b""  # the "found and opened" marker
    assert b"".join(got) == content
    assert len(got) > 10 and max(len(c) for c in got) <= files.CHUNK_BYTES

    async def missing_input() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await files.open_batch_file(stage_settings, conn, batch_id, "input")

    with pytest.raises(FileNotAvailable):
        asyncio.run(missing_input())


@pytest.mark.parametrize("shape", ["chat", "responses"])
def test_without_usage_from_openai_the_batch_usage_is_summed_from_its_lines(
    shape, sim, stage_settings, connector, add_requests, open_batch, query, db_url
) -> None:
    """OpenAI batches from before ``usage`` existed (and compatible APIs) report none: the results run
    sums the lines' usage, in either naming, and ignores lines without it or with junk in it."""
    batch_id = submitted_and_finished(sim, stage_settings, connector, add_requests, open_batch, n=1)
    (batch,) = query("SELECT * FROM batchman.batches WHERE id = %s", batch_id)
    if shape == "chat":
        usages = [
            {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 40}},
            {"prompt_tokens": 50, "completion_tokens": 3,
             "completion_tokens_details": {"reasoning_tokens": 2}},
        ]  # fmt: skip
    else:
        usages = [
            {"input_tokens": 100, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 40}},
            {"input_tokens": 50, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 2}},
        ]
    usages.append({"prompt_tokens": "lots", "completion_tokens": None})  # junk: counted as nothing
    lines = [
        {"id": f"l{i}", "custom_id": f"x-{i}", "error": None,
         "response": {"status_code": 200, "body": {"usage": u}}}
        for i, u in enumerate(usages)
    ]  # fmt: skip
    lines.append({"id": "e", "custom_id": "r-0", "error": None, "response": {"status_code": 500, "body": {}}})
    output = sim.upload("out.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.batches SET input_tokens = NULL, cached_tokens = NULL, output_tokens = NULL,"
            " reasoning_tokens = NULL, openai_output_file_id = %s, openai_error_file_id = NULL WHERE id = %s",
            (output, batch_id),
        )
    ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)
    (after,) = query("SELECT * FROM batchman.batches WHERE id = %s", batch_id)
    got = [after[k] for k in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")]
    assert got == [150, 40, 10, 2]
    assert batch["input_tokens"] is not None  # the simulator did report usage; it was removed above


def test_usage_openai_reported_is_kept_over_the_lines(
    sim, stage_settings, connector, add_requests, open_batch, query, db_url
) -> None:
    batch_id = submitted_and_finished(sim, stage_settings, connector, add_requests, open_batch, n=3)
    with psycopg.connect(db_url) as conn:  # a report that differs from what the lines add up to
        conn.execute(
            "UPDATE batchman.batches SET input_tokens = 12345, cached_tokens = 0 WHERE id = %s", (batch_id,)
        )
    ingest_results(connector, sim.pipeline_client(stage_settings), batch_id, max_resubmits=1)
    (batch,) = query("SELECT input_tokens FROM batchman.batches WHERE id = %s", batch_id)
    assert batch["input_tokens"] == 12345
