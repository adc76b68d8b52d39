"""Fixtures: a real uvicorn server running the simulator in a background thread, plus small helpers.

One server is shared by the session and reset before every test (``sim``); tests that need other settings
start their own with ``make_server``. Every server uses a frozen clock, so only ``/_sim/advance`` moves time
and no assertion depends on wall-clock luck.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from batch_pipeline.simulator.app import create_app
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer

# Durations long enough to make every phase visible with /_sim/advance, never waited for for real.
PHASES = {
    "validating_seconds": 10,
    "in_progress_seconds": 40,
    "finalizing_seconds": 10,
    "cancelling_seconds": 10,
}


def sim_settings(data_dir: Path, **overrides: Any) -> SimulatorSettings:
    """Settings that ignore the caller's SIMULATOR_* environment (an unused prefix) and any .env file."""
    values: dict[str, Any] = {"data_dir": data_dir, "freeze_clock": True, "seed": 7, **PHASES}
    values.update(overrides)
    return SimulatorSettings(_env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", **values)


class SimServer(ThreadedServer):
    """The simulator on a free local port (see ``batch_pipeline.simulator.testing``) plus test helpers."""

    def __init__(self, settings: SimulatorSettings) -> None:
        super().__init__(create_app(settings))
        self.settings = settings
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": "Bearer sk-test"})
        self._client: openai.OpenAI | None = None

    # -- input builders (static so test modules need no imports from this conftest) ----------------
    @staticmethod
    def jsonl(lines: list[dict[str, Any]]) -> bytes:
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    @staticmethod
    def request_line(custom_id: str, url: str = "/v1/chat/completions", **body: Any) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}

    @staticmethod
    def chat_line(
        custom_id: str, text: str = "Say hello", model: str = "gpt-4o-mini", **extra: Any
    ) -> dict[str, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    @classmethod
    def chat_lines(cls, count: int, **extra: Any) -> list[dict[str, Any]]:
        return [cls.chat_line(f"req-{i}", f"Question {i}", **extra) for i in range(count)]

    def stop(self) -> None:
        self.http.close()
        if self._client is not None:
            self._client.close()
        super().stop()

    # -- clients ------------------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> openai.OpenAI:
        """An SDK client with retries off; the default one is cached (building a client costs ~80 ms)."""
        if not kwargs and self._client is not None:
            return self._client
        options: dict[str, Any] = {"api_key": "sk-test", "max_retries": 0, "timeout": 30.0, **kwargs}
        client = openai.OpenAI(base_url=self.base_url, **options)
        if not kwargs:
            self._client = client
        return client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    # -- control surface ----------------------------------------------------------------------------
    def advance(self, seconds: float) -> int:
        response = self.http.post("/_sim/advance", json={"seconds": seconds})
        assert response.status_code == 200, response.text
        return response.json()["now"]

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_sim/stats").json()

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        response = self.http.put("/_sim/faults", json=changes)
        assert response.status_code == 200, response.text
        return response.json()

    def reset(self) -> None:
        assert self.http.post("/_sim/reset").status_code == 200

    # -- shortcuts ----------------------------------------------------------------------------------
    def upload(self, lines: list[dict[str, Any]], name: str = "input.jsonl") -> str:
        return self.client().files.create(file=(name, self.jsonl(lines)), purpose="batch").id

    def submit(
        self, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions", **kwargs: Any
    ) -> openai.types.Batch:
        file_id = self.upload(lines)
        return self.client().batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window="24h", **kwargs
        )

    def finish(self, batch_id: str) -> openai.types.Batch:
        """Advance past every phase and return the finished batch."""
        self.advance(sum(PHASES.values()) + 1)
        return self.client().batches.retrieve(batch_id)

    def read_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        text = self.client().files.content(file_id).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    server = SimServer(sim_settings(tmp_path_factory.mktemp("sim-shared")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimServer) -> SimServer:
    """The shared simulator, reset to a clean state (files, batches, clock, stats, faults)."""
    sim_server.reset()
    return sim_server


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., SimServer]]:
    """Start a dedicated simulator with extra settings; stopped at the end of the test."""
    started: list[SimServer] = []

    def factory(data_dir: Path | None = None, **overrides: Any) -> SimServer:
        server = SimServer(sim_settings(data_dir or tmp_path / f"sim-{len(started)}", **overrides))
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
