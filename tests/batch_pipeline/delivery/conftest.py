"""Delivery test helpers: batches of results seeded in a real Postgres, and real HTTP receivers.

``Receiver`` is an aiohttp server on a free loopback port in its own thread; a ``behave`` function
decides each answer from how many times that request id was seen before, so "fail twice then
succeed" needs no clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from batch_pipeline.delivery.deliverer import DeliveryOptions
from batch_pipeline.delivery.webhook import WebhookOptions
from batch_pipeline.url_policy import EgressPolicy

# What a receiver answers: (status, headers) or "hang" to never answer in time.
Answer = tuple[int, dict[str, str]] | str
Behave = Callable[[int, web.Request], Answer]


def ok(_seen: int, _req: web.Request) -> Answer:
    return 200, {}


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    behave: Behave = ok
    hits: dict[str, list[Hit]] = field(default_factory=lambda: defaultdict(list))
    port: int = 0
    hang_seconds: float = 30.0  # how long a "hang" answer keeps the request open

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        rid = req.headers.get("x-batcher-request-id", "?")
        seen = len(self.hits[rid])
        self.hits[rid].append(Hit(dict(req.headers), body))
        answer = self.behave(seen, req)
        if answer == "hang":
            await asyncio.sleep(self.hang_seconds)
            return web.Response(status=200)
        status, headers = answer
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    def total(self) -> int:
        return sum(len(v) for v in self.hits.values())


@contextlib.contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    """Run ``receiver`` until the block ends."""
    yield from _serve(receiver)


def _serve(receiver: Receiver) -> Iterator[Receiver]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runner_box["runner"] = runner
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "receiver did not start"
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(runner_box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[Behave], Receiver]]:
    """Start receivers with a given behaviour; all are stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda behave=ok: stack.enter_context(serve(Receiver(behave)))


def result_line(custom_id: str, failed: bool = False) -> dict[str, Any]:
    """An OpenAI output (or error) line, as the results job stores it."""
    if failed:
        return {
            "id": f"batch_req_{custom_id}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": "server_error", "message": "boom"},
        }
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "req_x", "body": {"output": f"hello {custom_id}"}},
        "error": None,
    }


def seed_batch(
    db_url: str,
    configs: list[dict[str, str]],
    state: str = "delivering",
    failed: frozenset[int] = frozenset(),
) -> tuple[int, list[int]]:
    """A batch in ``state`` whose requests (one per delivery config) hold results due now."""
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state)"
            " VALUES ('/v1/responses', 'gpt-4o-mini', %s) RETURNING id",
            (state,),
        ).fetchone()[0]
        ids = []
        for i, cfg in enumerate(configs):
            cid = f"b{batch_id}-r{i}"
            rid = conn.execute(
                """INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,
                       estimated_tokens, delivery_config, state, batch_id, result, error_msg,
                       next_attempt_at)
                   VALUES (%s, '/v1/responses', 'gpt-4o-mini', '{}', 2, 1, %s, 'openai_processed', %s,
                           %s, %s, now())
                   RETURNING id""",
                (
                    cid,
                    Jsonb(cfg),
                    batch_id,
                    Jsonb(result_line(cid, i in failed)),
                    "server_error: boom" if i in failed else None,
                ),
            ).fetchone()[0]
            ids.append(rid)
    return batch_id, ids


def webhook(url: str) -> dict[str, str]:
    return {"type": "webhook", "webhook_url": url}


def rows(db_url: str, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def requests_of(db_url: str, batch_id: int) -> list[dict[str, Any]]:
    return rows(db_url, "SELECT * FROM batchman.requests WHERE batch_id = %s ORDER BY id", (batch_id,))


def attempts_of(db_url: str, request_id: int) -> list[dict[str, Any]]:
    return rows(
        db_url, "SELECT * FROM batchman.delivery_attempts WHERE request_id = %s ORDER BY id", (request_id,)
    )


def batch_state(db_url: str, batch_id: int) -> str:
    return rows(db_url, "SELECT state FROM batchman.batches WHERE id = %s", (batch_id,))[0]["state"]


def options(**kw: Any) -> DeliveryOptions:
    """Short timeouts and an immediate, jitter-free schedule unless a test says otherwise."""
    hook = WebhookOptions(
        connect_timeout=kw.pop("connect_timeout", 2.0),
        read_timeout=kw.pop("read_timeout", 2.0),
        concurrency=kw.pop("concurrency", 8),
        signing_secret=kw.pop("signing_secret", None),
        policy=kw.pop("policy", EgressPolicy(False)),
    )
    defaults: dict[str, Any] = {"schedule": (0.0, 0.0, 0.0), "jitter": 0.0, "claim_size": 50}
    defaults.update(kw)
    return DeliveryOptions(webhook=hook, **defaults)


def body_json(hit: Hit) -> dict[str, Any]:
    return json.loads(hit.body)


class TcpProxy:
    """A loopback TCP proxy to RabbitMQ that can cut every connection through it, like a broker
    restart or a network drop would; new connections after the cut go through normally.

    ``cut_after_bytes``: cut once, as soon as that many client→broker bytes have passed.
    ``down_for``: that cut (or ``down()``) also keeps the proxy down for this many seconds: every new
    connection is reset at once (like a refused connect), counted in ``refused``.
    """

    def __init__(self, upstream_port: int, cut_after_bytes: int | None = None, down_for: float = 0.0) -> None:
        import socket

        self.upstream_port = upstream_port
        self.cut_after_bytes = cut_after_bytes
        self.down_for = down_for
        self.cuts = 0
        self.refused = 0
        self.accepted = 0
        self._down_until = 0.0
        self._sent = 0
        self._socks: list[Any] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def is_down(self) -> bool:
        import time

        return time.monotonic() < self._down_until

    def down(self, seconds: float) -> None:
        """Cut every connection and refuse new ones for ``seconds``."""
        import time

        self._down_until = time.monotonic() + seconds
        self.cut()

    def up(self) -> None:
        """End a ``down()`` early: new connections go through again."""
        self._down_until = 0.0

    def url(self, rabbitmq_url: str) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(rabbitmq_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, *parts[2:]))

    def _accept(self) -> None:
        import socket
        import struct

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.is_down:
                # RST instead of FIN: the client sees its connect fail at once, as with a refusal.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                self.refused += 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.accepted += 1
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: Any, dst: Any, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if outbound and self.cut_after_bytes is not None:
                    with self._lock:
                        self._sent += len(data)
                        cut = self._sent >= self.cut_after_bytes
                    if cut:
                        self.cut_after_bytes = None
                        self.down(self.down_for)
                        return
        except OSError:
            pass
        finally:
            self._hang_up(src, dst)

    @staticmethod
    def _hang_up(*socks: Any) -> None:
        import socket

        # shutdown() before close(): the pump of the other direction may be blocked in recv() on one
        # of these, and on Linux a close() alone neither wakes it nor sends the FIN (the broker would
        # keep the connection, and its unacked messages, until a heartbeat timeout).
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        with self._lock:
            self.cuts += 1
        self._drop_all()

    def _drop_all(self) -> None:
        import socket

        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._listener.close()
        self._drop_all()


def queue_maker(rabbitmq_url: str) -> Iterator[Callable[..., str]]:
    """Create durable queues with unique names (``arguments`` e.g. a DLX); all deleted afterwards."""
    import uuid

    import pika

    made: list[str] = []

    def make(prefix: str = "test", arguments: dict | None = None) -> str:
        name = f"batchman-{prefix}-{uuid.uuid4().hex[:10]}"
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
            conn.channel().queue_declare(name, durable=True, arguments=arguments)
        made.append(name)
        return name

    yield make
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
        channel = conn.channel()
        for name in made:
            channel.queue_delete(name)


@pytest.fixture
def queues(rabbitmq_url: str) -> Iterator[Callable[..., str]]:
    yield from queue_maker(rabbitmq_url)


def drain(rabbitmq_url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message now in ``queue`` as (properties, body), acked."""
    import pika

    out = []
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
        channel = conn.channel()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))


def queue_depth(rabbitmq_url: str, queue: str) -> int:
    import pika

    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
