"""Delivery throughput, each against a baseline measured in the same run (``python -m bench delivery``).

- Webhooks to a fast local receiver (its own process): our sender, and the whole deliverer (claim from
  Postgres, send, record attempts), vs a bare aiohttp sender; httpx at the same concurrency for the
  choice of client. Targets: >= 2,000 deliveries/s and >= 0.7 of the bare sender.
- RabbitMQ, confirmed persistent: our publisher and the whole deliverer vs a bare pika SelectConnection
  publisher with a window of confirms. Targets: >= 3,000 msg/s and >= 0.7 of the bare publisher.
- RabbitMQ intake: requests/s from a full queue into Postgres. Target >= 2,000/s.
Needs RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672/%2F) and a Postgres (see bench.support).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator

import aiohttp
import httpx
import pika
import psycopg

from batch_pipeline.delivery.deliverer import DeliveryOptions, deliver_batch
from batch_pipeline.delivery.rabbitmq import RabbitPublisher
from batch_pipeline.delivery.webhook import WebhookOptions, WebhookSender
from batch_pipeline.store.records import Delivery
from bench.support import free_port, fresh_database, postgres_server, report

WEBHOOKS = 10_000
MESSAGES = 20_000
INTAKE = 20_000
CONCURRENCY = 32
WINDOW = 1000
# The box is shared (load varies by the second): baseline and ours alternate, best round counts.
ROUNDS = 3
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

RESULT = {
    "id": "batch_req_0",
    "custom_id": "x",
    "response": {"status_code": 200, "request_id": "req_1", "body": {"output_text": "Paris. " * 250}},
    "error": None,
}
BODY = json.dumps(RESULT).encode()  # ~2 KB, a typical small result

# A keep-alive HTTP/1.1 responder on raw asyncio: as cheap as a receiver gets, so the sender is measured.
RECEIVER = textwrap.dedent(
    """
    import asyncio, sys
    OK = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok"
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t, self.buf = t, b""
        def data_received(self, data):
            self.buf += data
            while True:
                head, sep, rest = self.buf.partition(b"\\r\\n\\r\\n")
                if not sep: return
                n = 0
                for line in head.split(b"\\r\\n"):
                    if line[:15].lower() == b"content-length:": n = int(line[15:])
                if len(rest) < n: return
                self.buf = rest[n:]
                self.t.write(OK)
    async def main():
        server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
        await server.serve_forever()
    asyncio.run(main())
    """
)


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(url, content=b"{}", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def rate(n: int, started: float) -> float:
    return n / (time.perf_counter() - started)


# --- webhooks --------------------------------------------------------------------------------------


async def bare_aiohttp(url: str, n: int) -> float:
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def one(i: int) -> None:
            async with gate, session.post(url, data=BODY, headers={"content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return rate(n, started)


async def bare_httpx(url: str, n: int) -> float:
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(i: int) -> None:
            async with gate:
                r = await client.post(url, content=BODY, headers={"content-type": "application/json"})
                assert r.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return rate(n, started)


async def our_sender(url: str, n: int) -> float:
    ds = [Delivery(i, f"c-{i}", {"type": "webhook", "webhook_url": url}, BODY) for i in range(n)]
    opts = WebhookOptions(concurrency=CONCURRENCY, signing_secret=SECRET)
    async with WebhookSender(opts) as sender:
        started = time.perf_counter()
        attempts = await sender.send_all(ds)
        result = rate(n, started)
    assert all(a.ok for a in attempts), {a.outcome for a in attempts}
    return result


SEED = """
WITH b AS (INSERT INTO batchman.batches (endpoint, model, state) VALUES ('/v1/responses', 'm', 'delivering')
           RETURNING id)
INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,
                               delivery_config, state, batch_id, result, next_attempt_at)
SELECT %(prefix)s || g, '/v1/responses', 'm', '{}', 2, 1, %(config)s::jsonb, 'openai_processed', b.id,
       %(result)s::jsonb, now()
FROM b, generate_series(1, %(n)s) g
RETURNING batch_id
"""


def seed(db: str, n: int, config: dict) -> int:
    with psycopg.connect(db) as conn:
        params = {
            "prefix": uuid.uuid4().hex[:6],
            "config": json.dumps(config),
            "result": json.dumps(RESULT),
            "n": n,
        }
        return conn.execute(SEED, params).fetchone()[0]


def deliverer_rate(db: str, n: int, config: dict, opts: DeliveryOptions) -> float:
    batch_id = seed(db, n, config)
    started = time.perf_counter()
    report_ = asyncio.run(deliver_batch(db, batch_id, opts))
    result = rate(n, started)
    assert report_.batch_state == "delivered", report_.as_dict()
    return result


def bench_webhooks(db: str) -> None:
    print(f"webhooks (2 KB results, {CONCURRENCY} in flight, receiver in its own process, best of {ROUNDS})")
    bare = ours = full = hx = 0.0
    with receiver() as url:
        asyncio.run(bare_aiohttp(url, 1000))  # warm-up
        opts = DeliveryOptions(webhook=WebhookOptions(concurrency=CONCURRENCY, signing_secret=SECRET))
        for _ in range(ROUNDS):
            bare = max(bare, asyncio.run(bare_aiohttp(url, WEBHOOKS)))
            ours = max(ours, asyncio.run(our_sender(url, WEBHOOKS)))
            full = max(full, deliverer_rate(db, WEBHOOKS, {"type": "webhook", "webhook_url": url}, opts))
        hx = asyncio.run(bare_httpx(url, 2000))
    report("bare aiohttp sender (baseline)", bare, "deliv/s")
    report("bare httpx sender (same concurrency, 2,000 once)", hx, "deliv/s", f"{hx / bare:.2f} of baseline")
    report("our WebhookSender (signed, SSRF resolver)", ours, "deliv/s", f"{ours / bare:.2f} of baseline")
    report(
        "deliver_batch end to end (claim, send, record)", full, "deliv/s", f"{full / bare:.2f} of baseline"
    )


# --- RabbitMQ --------------------------------------------------------------------------------------


def bare_publisher(queue: str, n: int) -> float:
    """pika SelectConnection, persistent, mandatory, at most WINDOW unconfirmed: the reference shape."""
    state = {"next": 0, "confirmed": 0, "in_flight": 0, "started": 0.0}
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def pump(channel) -> None:
        while state["next"] < n and state["in_flight"] < WINDOW:
            channel.basic_publish("", queue, BODY, props, mandatory=True)
            state["next"] += 1
            state["in_flight"] += 1

    def on_confirm(frame) -> None:
        tag = frame.method.delivery_tag
        done = tag - state["confirmed"] if frame.method.multiple else 1
        state["confirmed"] += done
        state["in_flight"] -= done
        if state["confirmed"] >= n:
            conn.close()
        else:
            pump(channel_box[0])

    channel_box: list = []

    def on_channel(channel) -> None:
        channel_box.append(channel)
        channel.confirm_delivery(
            on_confirm, callback=lambda _f: (state.update(started=time.perf_counter()), pump(channel))
        )

    conn = pika.SelectConnection(
        pika.URLParameters(RABBITMQ_URL),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _e: c.ioloop.stop(),
    )
    conn.ioloop.start()
    return rate(n, state["started"])


def our_publisher(queue: str, n: int) -> float:
    ds = [Delivery(i, f"c-{i}", {"type": "rabbitmq", "rabbitmq_queue": queue}, BODY) for i in range(n)]
    publisher = RabbitPublisher(RABBITMQ_URL, window=WINDOW)
    publisher.publish_batch(ds[:10])  # connect outside the timing, like the baseline's setup
    started = time.perf_counter()
    attempts = publisher.publish_batch(ds)
    result = rate(n, started)
    publisher.close()
    assert all(a.ok for a in attempts)
    return result


@contextlib.contextmanager
def scratch_queue() -> Iterator[str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))) as conn:
        conn.channel().queue_declare(name, durable=True)
    try:
        yield name
    finally:
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))) as conn:
            conn.channel().queue_delete(name)


def bench_rabbitmq(db: str) -> None:
    print(f"RabbitMQ (2 KB persistent messages, confirms, window {WINDOW}, durable queue, best of {ROUNDS})")
    bare = ours = full = 0.0
    opts = DeliveryOptions(rabbitmq_url=RABBITMQ_URL, rabbitmq_window=WINDOW, claim_size=5000)
    for _ in range(ROUNDS):
        # A fresh queue for every measurement: a deeper queue is slower to publish to.
        with scratch_queue() as q:
            bare = max(bare, bare_publisher(q, MESSAGES))
        with scratch_queue() as q:
            ours = max(ours, our_publisher(q, MESSAGES))
        with scratch_queue() as q:
            full = max(full, deliverer_rate(db, MESSAGES, {"type": "rabbitmq", "rabbitmq_queue": q}, opts))
    report("bare windowed-confirm publisher (baseline)", bare, "msg/s")
    report("our RabbitPublisher", ours, "msg/s", f"{ours / bare:.2f} of baseline")
    report(
        "deliver_batch end to end (claim, publish, record)", full, "msg/s", f"{full / bare:.2f} of baseline"
    )


# --- RabbitMQ intake -------------------------------------------------------------------------------


def bench_intake(db: str) -> None:
    from batch_pipeline.config import load_settings
    from batch_pipeline.intake.rabbitmq import IntakeConsumer

    print("RabbitMQ intake (chat/completions requests, prefetch 1000, batches of 500)")
    with scratch_queue() as q:
        prefix = uuid.uuid4().hex[:6]
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))) as conn:
            channel = conn.channel()
            for i in range(INTAKE):
                body = {
                    "custom_id": f"{prefix}-{i}",
                    "url": "/v1/chat/completions",
                    "method": "POST",
                    "body": {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": f"Q{i}? " * 20}],
                    },
                    "delivery_config": {"type": "webhook", "webhook_url": "https://hooks.example.com/r"},
                }
                channel.basic_publish("", q, json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2))
        settings = load_settings(_env_file=None, database_url=db, openai_api_key=None)
        consumer = IntakeConsumer(settings, db, url=RABBITMQ_URL, queue=q)
        thread = threading.Thread(target=consumer.run, daemon=True)
        started = time.perf_counter()
        thread.start()
        while consumer.counts["accepted"] < INTAKE:
            assert thread.is_alive() and consumer.counts["rejected"] == 0, consumer.counts
            time.sleep(0.01)
        result = rate(INTAKE, started)
        consumer.stop()
        thread.join(10)
    report("RabbitMQ intake into Postgres", result, "req/s", "target >= 2,000")


def main() -> None:
    with postgres_server() as server, fresh_database(server) as db:
        bench_webhooks(db)
        bench_rabbitmq(db)
        bench_intake(db)


if __name__ == "__main__":
    main()
