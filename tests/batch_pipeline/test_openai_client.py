"""Reconciliation lookups against the simulator through the official SDK."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

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
