"""End to end: HTTP intake → batching → simulator → results → webhook and RabbitMQ delivery."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pika
import pytest

from batch_pipeline.defs.definitions import build_definitions
from intake_api.main import create_app
from tests.conftest import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def queue(rabbitmq_url: str):
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = conn.channel()
    channel.queue_declare(name, durable=True)
    yield channel, name
    channel.queue_delete(name)
    conn.close()


def drain(channel, queue_name: str) -> list[tuple[object, bytes]]:
    """Every message now in the queue (acknowledged), in order."""
    messages = []
    while True:
        method, props, body = channel.basic_get(queue_name, auto_ack=True)
        if method is None:
            return messages
        messages.append((props, body))


def test_intake_to_webhook_and_rabbitmq(
    driver, pipeline_settings, db_url, receiver, queue, rabbitmq_url, server_thread
) -> None:
    channel, queue_name = queue
    settings = pipeline_settings.model_copy(update={"rabbitmq_url": rabbitmq_url})
    # The delivery run reads RabbitMQ from its settings; rebuild the definitions with them.
    driver.defs = build_definitions(settings, dsn=db_url)
    hooks = [f"e2e-hook-{i}" for i in range(3)]
    queued = [f"e2e-queue-{i}" for i in range(3)]
    with server_thread(create_app(settings, database_url=db_url)) as api:
        for custom_id in hooks + queued:
            delivery = (
                {"type": "webhook", "webhook_url": receiver.url}
                if custom_id in hooks
                else {"type": "rabbitmq", "rabbitmq_queue": queue_name}
            )
            body = {
                "custom_id": custom_id,
                "url": "/v1/chat/completions",
                "method": "POST",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
                "delivery_config": delivery,
            }
            assert httpx.post(f"{api.url}/api/requests", json=body).status_code == 202
        driver.drive()
        shown = {c: httpx.get(f"{api.url}/api/requests/{c}").json() for c in hooks + queued}
    assert {c: r["state"] for c, r in shown.items()} == dict.fromkeys(hooks + queued, "delivered")
    assert all(r["result"]["response"]["status_code"] == 200 for r in shown.values())

    # Exactly once each: every delivery counted, not just the first.
    assert Counter(p["custom_id"] for _, p in receiver.received) == Counter(hooks)
    for headers, payload in receiver.received:
        custom_id = payload["custom_id"]
        assert payload["response"]["status_code"] == 200
        assert headers["x-batcher-custom-id"] == custom_id
        assert headers["idempotency-key"] == f"batcher:req:{shown[custom_id]['id']}"
        assert headers["content-type"] == "application/json"

    messages = drain(channel, queue_name)
    assert Counter(json.loads(body)["custom_id"] for _, body in messages) == Counter(queued)
    for props, body in messages:
        custom_id = json.loads(body)["custom_id"]
        assert props.message_id == f"batcher:req:{shown[custom_id]['id']}" and props.delivery_mode == 2
