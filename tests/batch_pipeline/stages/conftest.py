"""Fixtures for the stage tests: the simulator as OpenAI (frozen clock: only ``advance`` moves time),
requests queued as intake leaves them, and batches opened as the batching sensor opens them.

The stages are called directly, as their ops call them; an op's retry is a second call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from psycopg.rows import dict_row

from batch_pipeline import openai_client as oai
from batch_pipeline.config import Settings
from batch_pipeline.db import connect
from batch_pipeline.simulator.app import create_app
from batch_pipeline.simulator.faults import HTTP_FAULT_HEADER
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer

MODEL = "gpt-4o-mini"
URL = "/v1/chat/completions"


class Sim:
    """The simulator plus its control surface; ``client`` is an SDK client with retries off."""

    def __init__(self, server: ThreadedServer) -> None:
        self.url = server.url
        self.base_url = server.base_url
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)

    def pipeline_client(self, settings: Settings, **options: Any) -> openai.OpenAI:
        """The client an op gets from ``resources.OpenAI.client()``: SDK retries on, as in production."""
        return openai.OpenAI(**oai.client_options(settings, **options))

    def faulty_client(
        self, settings: Settings, method: str, path: str, fault: str, times: int = 1, **options: Any
    ) -> openai.OpenAI:
        """A pipeline client whose next ``times`` calls of ``method path`` carry the simulator's fault
        header (``500``, ``drop_after``, …): one call fails, the others go through untouched."""
        left = [times]

        def mark(request: Any) -> None:
            if left[0] > 0 and request.method == method and request.url.path == path:
                left[0] -= 1
                request.headers[HTTP_FAULT_HEADER] = fault

        http_client = openai.DefaultHttpxClient(event_hooks={"request": [mark]})
        return openai.OpenAI(**oai.client_options(settings, **options), http_client=http_client)

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_sim/stats").raise_for_status().json()

    def faults(self, **values: Any) -> dict[str, Any]:
        return self.http.put("/_sim/faults", json=values).raise_for_status().json()

    def advance(self, seconds: float) -> None:
        self.http.post("/_sim/advance", json={"seconds": seconds}).raise_for_status()

    def batches(self) -> list[openai.types.Batch]:
        return list(self.client.batches.list(limit=100).data)

    def upload(self, name: str, content: bytes, purpose: str = "user_data") -> str:
        """A file stored as is (``user_data`` is not validated): e.g. a result file written by a test."""
        return self.client.files.create(file=(name, content), purpose=purpose).id  # type: ignore[arg-type]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    settings = SimulatorSettings(
        _env_file=None,
        _env_prefix="SIMULATOR_TESTS_IGNORE_",
        data_dir=tmp_path / "sim",
        freeze_clock=True,
        validating_seconds=1,
        in_progress_seconds=10,
        finalizing_seconds=1,
        cancelling_seconds=1,
        log_level="warning",
    )
    server = ThreadedServer(create_app(settings)).start()
    sim = Sim(server)
    try:
        yield sim
    finally:
        sim.http.close()
        sim.client.close()
        server.stop()


@pytest.fixture
def stage_settings(settings_factory: Callable[..., Settings], db_url: str, sim: Sim) -> Settings:
    return settings_factory(database_url=db_url, openai_base_url=sim.base_url, openai_max_resubmits=1)


@pytest.fixture
def connector(db_url: str) -> Callable[[], Any]:
    """What stages take to open their short transactions."""
    return lambda: connect(db_url)


@pytest.fixture
def query(db_url: str) -> Callable[..., list[dict[str, Any]]]:
    def run(sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(db_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    return run


INSERT_REQUEST = """
INSERT INTO batchman.requests
    (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
QUEUE_DELIVERY = json.dumps({"type": "rabbitmq", "rabbitmq_queue": "results"})


@pytest.fixture
def add_requests(db_url: str) -> Callable[..., list[str]]:
    """Queue chat requests as intake would; ``body`` extras go into every request body."""

    def add(n: int, prefix: str = "r", faults: dict[int, str] | None = None, **body: Any) -> list[str]:
        rows = []
        for i in range(n):
            custom_id = f"{prefix}-{i}"
            request_body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"question {i}"}],
                **body,
            }
            if faults and i in faults:
                request_body["x_sim_fault"] = faults[i]
            line = json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": request_body})
            rows.append((custom_id, URL, MODEL, line, len(line.encode()), 10, QUEUE_DELIVERY))
        with psycopg.connect(db_url) as conn, conn.cursor() as cur:
            cur.executemany(INSERT_REQUEST, rows)
        return [r[0] for r in rows]

    return add


@pytest.fixture
def open_batch(db_url: str) -> Callable[[], int]:
    """An empty ``ready`` batch, as the batching sensor opens it; the upload run fills it."""

    def make() -> int:
        with psycopg.connect(db_url) as conn:
            return conn.execute(
                "INSERT INTO batchman.batches (endpoint, model, state) VALUES (%s, %s, 'ready') RETURNING id",
                (URL, MODEL),
            ).fetchone()[0]

    return make
