"""Reconciliation lookups against the simulator through the official SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from batch_pipeline import openai_client as oai
from batch_pipeline.simulator.app import create_app
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer

LINE = (
    b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}}\n'
)


def test_find_batch_adopts_a_live_batch_but_not_one_an_earlier_attempt_ended(tmp_path: Path) -> None:
    settings = SimulatorSettings(_env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path)
    server = ThreadedServer(create_app(settings)).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        file_id = client.files.create(file=("in.jsonl", LINE), purpose="batch").id
        # The first attempt of batch 7 failed at OpenAI for its token queue (as before a backoff).
        failed = client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={oai.METADATA_KEY: "7", "sim_fault": "token_limit_exceeded"},
        )
        httpx.post(f"{server.url}/_sim/advance", json={"seconds": 5}).raise_for_status()
        assert client.batches.retrieve(failed.id).status == "failed"
        assert oai.find_batch(client, 7) is None

        live = oai.create_batch(client, 7, file_id, "/v1/chat/completions")
        assert oai.find_batch(client, 7).id == live.id
        assert oai.find_batch(client, 8) is None
    finally:
        server.stop()


def test_the_calls_that_create_something_go_out_once_even_with_sdk_retries_on(tmp_path: Path) -> None:
    """A lost answer must reach our code (which looks before trying again), not be retried blindly by the
    SDK: a repeated upload leaves an orphan file, a repeated create a second paid batch."""
    settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path / "sim", freeze_clock=True
    )
    server = ThreadedServer(create_app(settings)).start()
    try:
        client = openai.OpenAI(
            base_url=server.base_url, api_key="sk-test", max_retries=oai.PIPELINE_MAX_RETRIES
        )
        lost = {"files.create": 1, "batches.create": 1}
        httpx.put(f"{server.url}/_sim/faults", json={"drop_response_next": lost}).raise_for_status()
        path = tmp_path / oai.input_file_name(7)
        path.write_bytes(LINE)

        with pytest.raises(openai.APIConnectionError):
            oai.upload_input_file(client, 7, path)
        uploaded = oai.find_input_file(client, 7)  # it happened: found by its name
        assert uploaded is not None
        with pytest.raises(openai.APIConnectionError):
            oai.create_batch(client, 7, uploaded.id, "/v1/chat/completions")
        (created,) = oai.find_batches(client, 7)  # it happened: found by our id in its metadata

        assert created.input_file_id == uploaded.id
        stats = httpx.get(f"{server.url}/_sim/stats").json()
        assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
        assert stats["http_faults"] == {"drop_after": 2}
        assert client.max_retries == oai.PIPELINE_MAX_RETRIES  # other calls keep the SDK's retries
    finally:
        server.stop()


def test_find_batches_lists_every_live_batch_of_ours_oldest_first(tmp_path: Path) -> None:
    settings = SimulatorSettings(_env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path)
    server = ThreadedServer(create_app(settings)).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        file_id = client.files.create(file=("in.jsonl", LINE), purpose="batch").id
        first = oai.create_batch(client, 7, file_id, "/v1/chat/completions")
        oai.create_batch(client, 8, file_id, "/v1/chat/completions")
        second = oai.create_batch(client, 7, file_id, "/v1/chat/completions")
        cancelled = oai.create_batch(client, 7, file_id, "/v1/chat/completions")
        client.batches.cancel(cancelled.id)

        assert [b.id for b in oai.find_batches(client, 7)] == [first.id, second.id]
        assert oai.find_batch(client, 7).id == first.id  # type: ignore[union-attr]
    finally:
        server.stop()
