"""The whole product through the processes ``batchman up`` starts (API, Dagster webserver and daemon,
simulator) on an external database: requests in over HTTP, single and bulk; results out to a real
webhook receiver and a real RabbitMQ queue; every custom_id delivered exactly once; Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pika
import pytest

from tests.batch_pipeline.test_cli import _batchman, _service_env, _wait_for
from tests.conftest import WebhookReceiver, free_port

pytestmark = [pytest.mark.process, pytest.mark.rabbitmq]

# The stages run back to back within seconds: sensors tick every second, and the simulator finishes
# a batch in about a second.
FAST = {
    "BATCH_MAX_AGE_SECONDS": "0",
    "SENSOR_INTERVAL_SECONDS": "1",
    "OPENAI_POLL_INTERVAL_SECONDS": "1",
    "SIMULATOR_VALIDATING_SECONDS": "0.2",
    "SIMULATOR_IN_PROGRESS_SECONDS": "0.5",
    "SIMULATOR_FINALIZING_SECONDS": "0.2",
}
DELIVERED_WITHIN_SECONDS = 240


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def queue(rabbitmq_url: str) -> Iterator[tuple[pika.adapters.blocking_connection.BlockingChannel, str]]:
    name = f"up-e2e-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = conn.channel()
    channel.queue_declare(name, durable=True)
    yield channel, name
    channel.queue_delete(name)
    conn.close()


def request(custom_id: str, delivery: dict) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Hello {custom_id}"}]}
    return {
        "custom_id": custom_id,
        "url": "/v1/chat/completions",
        "method": "POST",
        "body": body,
        "delivery_config": delivery,
    }


def test_requests_through_batchman_up_reach_a_webhook_and_a_queue_exactly_once(
    db_url: str, rabbitmq_url: str, receiver: WebhookReceiver, queue, tmp_path: Path
) -> None:
    channel, queue_name = queue
    ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
    env = _service_env(ports, tmp_path / "data", db_url) | FAST | {"RABBITMQ_URL": rabbitmq_url}
    proc = _batchman(["up", "--host", "127.0.0.1"], env, tmp_path)
    log = tmp_path / "batchman.log"
    api = f"http://127.0.0.1:{ports['PORT']}"
    hook = {"type": "webhook", "webhook_url": receiver.url}
    rabbit = {"type": "rabbitmq", "rabbitmq_queue": queue_name}
    singles = [request(f"single-{i}", hook if i % 2 else rabbit) for i in range(4)]
    # One (endpoint, model) group: one batch, so the test waits for one upload, results and delivery run.
    bulk = [request(f"bulk-{i}", hook if i % 2 else rabbit) for i in range(6)]
    everyone = [r["custom_id"] for r in singles + bulk]
    try:
        assert _wait_for(f"{api}/health", proc, log).json()["simulator"] is True
        _wait_for(f"{api}/health/ready", proc, log)
        sim = f"http://127.0.0.1:{ports['SIMULATOR_PORT']}/_sim/health"
        assert _wait_for(sim, proc, log).json()["simulator"] is True
        _wait_for(f"http://127.0.0.1:{ports['DAGSTER_PORT']}/dagster/server_info", proc, log)
        assert "SIMULATOR" in log.read_text()  # the loud banner
        with httpx.Client(base_url=api, timeout=30) as client:
            for item in singles:
                assert client.post("/api/requests", json=item).status_code == 202
            resp = client.post("/api/requests/bulk", json=bulk)
            assert resp.status_code in (200, 202, 207), resp.text
            states: dict[str, str] = {}
            deadline = time.monotonic() + DELIVERED_WITHIN_SECONDS
            while time.monotonic() < deadline:
                states = {c: client.get(f"/api/requests/{c}").json()["state"] for c in everyone}
                if set(states.values()) == {"delivered"}:
                    break
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            assert set(states.values()) == {"delivered"}, (states, log.read_text()[-3000:])
            # Every batch has settled: nothing is left that could send a second copy.
            batches = client.get("/api/batches").json()["data"]
            assert batches and {b["state"] for b in batches} == {"delivered"}, batches
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
            try:
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.read_text()[-3000:]
    for port in ports.values():  # every process is gone: nothing answers any more
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)

    hooks = [c for c, r in zip(everyone, singles + bulk, strict=True) if r["delivery_config"] == hook]
    queued = [c for c in everyone if c not in hooks]
    assert Counter(body["custom_id"] for _, body in receiver.received) == Counter(hooks)
    assert all(h["idempotency-key"].startswith("batcher:req:") for h, _ in receiver.received)
    messages = []
    while (got := channel.basic_get(queue_name, auto_ack=True))[0] is not None:
        messages.append(json.loads(got[2]))
    assert Counter(m["custom_id"] for m in messages) == Counter(queued)
    assert all(m["response"]["status_code"] == 200 for m in messages)
