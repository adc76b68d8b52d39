"""End to end: HTTP intake → batching → simulator → results → webhook and RabbitMQ delivery."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pika
import pytest

from batch_pipeline.defs.definitions import build_definitions
from intake_api.main import create_app


class Receiver:
    """A real local webhook receiver recording what it gets."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
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


def test_intake_to_webhook_and_rabbitmq(
    driver, pipeline_settings, db_url, receiver, queue, rabbitmq_url, server_thread
) -> None:
    channel, queue_name = queue
    settings = pipeline_settings.model_copy(update={"rabbitmq_url": rabbitmq_url})
    # The delivery run reads RabbitMQ from its resource; rebuild the definitions with it.
    driver.defs = build_definitions(settings, dsn=db_url)
    with server_thread(create_app(settings, database_url=db_url)) as api:
        for i, delivery in enumerate(
            [
                {"type": "webhook", "webhook_url": receiver.url},
                {"type": "rabbitmq", "rabbitmq_queue": queue_name},
            ]
        ):
            body = {
                "custom_id": f"e2e-{i}",
                "url": "/v1/chat/completions",
                "method": "POST",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
                "delivery_config": delivery,
            }
            assert httpx.post(f"{api.url}/api/requests", json=body).status_code == 202
        driver.drive()
        hook = httpx.get(f"{api.url}/api/requests/e2e-0").json()
        rabbit = httpx.get(f"{api.url}/api/requests/e2e-1").json()
    assert hook["state"] == "delivered" and rabbit["state"] == "delivered", (hook, rabbit)
    assert hook["result"]["response"]["status_code"] == 200

    headers, payload = receiver.received[0]
    assert payload["custom_id"] == "e2e-0" and payload["response"]["status_code"] == 200
    assert headers["x-batcher-custom-id"] == "e2e-0"
    assert headers["idempotency-key"] == f"batcher:req:{hook['id']}"

    method, props, message = channel.basic_get(queue_name, auto_ack=True)
    assert method is not None
    assert json.loads(message)["custom_id"] == "e2e-1"
    assert props.message_id == f"batcher:req:{rabbit['id']}" and props.delivery_mode == 2
