"""A batch's files downloaded through the UI (streamed from the OpenAI simulator), and the cost shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from batch_pipeline.simulator.app import create_app as create_simulator
from batch_pipeline.simulator.settings import SimulatorSettings
from tests.batch_pipeline.admin.helpers import add_batch
from tests.conftest import ServerThread
from tests.intake_api.conftest import serve


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path_factory.mktemp("sim"),
        freeze_clock=True,
    )  # fmt: skip
    with ServerThread(create_simulator(settings)) as server:
        yield server


def test_the_input_file_downloads_as_stored_at_openai(
    tmp_path: Path, db_url: str, simulator: ServerThread
) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "%s"}]}' % (b"x" * 200)
    line = b'{"custom_id": "c%d", "method": "POST", "url": "/v1/chat/completions", "body": %s}\n'
    content = b"".join(line % (i, body) for i in range(2000))  # ~600 KB: several chunks
    with openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test", max_retries=0) as sdk:
        file = sdk.files.create(file=("in.jsonl", content), purpose="batch")
    batch_id = add_batch(db_url, "uploaded", openai_input_file_id=file.id)
    with serve(tmp_path, db_url, openai_base_url=f"{simulator.url}/v1") as c:
        assert f'href="/batches/{batch_id}/files/input"' in c.get(f"/batches/{batch_id}").text
        got = c.get(f"/batches/{batch_id}/files/input")
        assert got.status_code == 200 and got.content == content
        assert f'filename="batch-{batch_id}-input.jsonl"' in got.headers["content-disposition"]
        assert c.get(f"/batches/{batch_id}/files/output").status_code == 404  # none written yet
        assert c.get(f"/batches/{batch_id}/files/passwd").status_code == 404
        assert c.get("/batches/999999/files/input").status_code == 404


def test_cost_and_savings_on_the_batch_page_and_the_dashboard(tmp_path: Path, db_url: str) -> None:
    batch_id = add_batch(
        db_url, "delivered", input_tokens=1_000_000, cached_tokens=0, output_tokens=1_000_000
    )
    with serve(tmp_path, db_url) as c:
        page = c.get(f"/batches/{batch_id}").text
        cost = re.search(r'id="batch-cost">\$([0-9.,]+)<', page)
        assert cost is not None and float(cost.group(1).replace(",", "")) > 0
        assert "Saved" in page
        dashboard = re.sub(r"<[^>]+>", " ", c.get("/").text)
        saved = re.search(r"Saved\s+\$([0-9.,]+)", dashboard)
        assert saved is not None and float(saved.group(1).replace(",", "")) > 0
