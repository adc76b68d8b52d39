"""The simulator's ``fail_next`` (``PUT /_sim/faults``): the next N calls of one operation meet one
fault, for the sustained-fault and crash tests of this package."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from batch_pipeline.simulator.faults import HTTP_FAULT_HEADER
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer, simulator_in_thread

LINE = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}\n'
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path, log_level="warning"
    )
    with simulator_in_thread(settings) as running:
        yield running


@pytest.fixture
def control(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def sdk(server: ThreadedServer, **options: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, **options)


def test_the_next_n_calls_of_one_operation_fail_and_others_pass(server, control) -> None:
    control.put("/_sim/faults", json={"fail_next": {"batches.list": {"fault": 500, "count": 2}}})
    client = sdk(server)
    client.files.list()  # another operation: untouched
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.batches.list()
    client.batches.list()  # used up
    faults = control.get("/_sim/faults").json()["fail_next"]
    assert faults == {"batches.list": {"fault": "500", "count": 0, "seconds": None}}
    assert control.get("/_sim/stats").json()["http_faults"] == {"500": 2}


def test_429_carries_retry_after_and_a_header_forced_call_does_not_use_a_count(server, control) -> None:
    control.put(
        "/_sim/faults",
        json={"retry_after_seconds": 7, "fail_next": {"files.list": {"fault": "429", "count": 1}}},
    )
    client = sdk(server)
    client.files.list(extra_headers={HTTP_FAULT_HEADER: "none"})  # the header decides this one
    with pytest.raises(openai.RateLimitError) as caught:
        client.files.list()
    assert caught.value.response.headers["retry-after"] == "7"
    client.files.list()


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("files.retrieve", lambda c, f: c.files.retrieve(f)),
        ("files.content", lambda c, f: c.files.content(f)),
        ("files.delete", lambda c, f: c.files.delete(f)),
    ],
)
def test_every_file_operation_can_be_faulted(server, control, operation, call) -> None:
    client = sdk(server)
    file_id = client.files.create(file=("in.jsonl", LINE), purpose="batch").id
    control.put("/_sim/faults", json={"fail_next": {operation: {"fault": "503", "count": 1}}})
    with pytest.raises(openai.InternalServerError):
        call(client, file_id)
    call(client, file_id)


def test_slow_runs_the_call_and_holds_its_answer_past_the_client_timeout(server, control) -> None:
    control.put("/_sim/faults", json={"fail_next": {"files.create": {"fault": "slow", "seconds": 30}}})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk(server, timeout=0.5).files.create(file=("in.jsonl", LINE), purpose="batch")
    assert time.monotonic() - started < 10
    stats = control.get("/_sim/stats").json()
    assert stats["files_uploaded"] == 1 and stats["http_faults"] == {"slow": 1}  # carried out, unheard


@pytest.mark.parametrize(
    "bad",
    [
        {"files.nope": {"fault": "500"}},
        {"files.list": {"fault": "418"}},
        {"files.list": {"fault": "500", "count": -1}},
        {"files.list": {"fault": "500", "extra": 1}},
    ],
)
def test_bad_fail_next_is_400_naming_the_field(control, bad) -> None:
    resp = control.put("/_sim/faults", json={"fail_next": bad})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "fail_next"


def test_a_put_replaces_it_and_reset_clears_it(server, control) -> None:
    control.put("/_sim/faults", json={"fail_next": {"files.list": {"fault": "500", "count": 3}}})
    control.put("/_sim/faults", json={"fail_next": {"batches.list": {"fault": "500", "count": 1}}})
    assert set(control.get("/_sim/faults").json()["fail_next"]) == {"batches.list"}
    control.put("/_sim/faults", json={"http_429_rate": 0})  # not naming it keeps it
    assert set(control.get("/_sim/faults").json()["fail_next"]) == {"batches.list"}
    control.post("/_sim/reset")
    assert control.get("/_sim/faults").json()["fail_next"] == {}
