"""Where the soak's results land, counted per custom_id, in a process of its own (``python -m
bench.soak.sinks PORT RABBITMQ_URL QUEUE``) so the load generator does not share its GIL:

- a webhook receiver: a keep-alive HTTP/1.1 responder on raw asyncio (as ``bench.delivery``'s, the
  cheapest receiver there is, so delivery is what gets measured) that counts each POST's
  ``x-batcher-custom-id`` header and answers 200;
- a RabbitMQ consumer of the results queue (auto-ack, in a thread) that counts the same header.

``GET /totals`` answers the sums and first/last arrival times; ``GET /counts`` every count.
:class:`Sinks` starts the process and reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import orjson

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_HEADER = b"x-batcher-custom-id:"


class _Tally:
    """Counts per custom_id and the first/last arrival, per sink; shared by the two threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, Counter[str]] = {"webhook": Counter(), "queue": Counter()}
        self.first: dict[str, float | None] = {"webhook": None, "queue": None}
        self.last: dict[str, float | None] = {"webhook": None, "queue": None}

    def add(self, sink: str, custom_id: str) -> None:
        now = time.time()
        with self.lock:
            self.counts[sink][custom_id] += 1
            if self.first[sink] is None:
                self.first[sink] = now
            self.last[sink] = now

    def totals(self) -> bytes:
        with self.lock:
            body = {
                sink: {
                    "received": sum(c.values()),
                    "distinct": len(c),
                    "first": self.first[sink],
                    "last": self.last[sink],
                }
                for sink, c in self.counts.items()
            }
        return orjson.dumps(body)

    def everything(self) -> bytes:
        with self.lock:
            return orjson.dumps({sink: dict(c) for sink, c in self.counts.items()})


def _receiver_protocol(tally: _Tally) -> type[asyncio.Protocol]:
    class Receiver(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                head, sep, rest = self.buf.partition(b"\r\n\r\n")
                if not sep:
                    return
                length, custom_id = 0, None
                lines = head.split(b"\r\n")
                for line in lines[1:]:
                    lowered = line[:20].lower()
                    if lowered.startswith(b"content-length:"):
                        length = int(line[15:])
                    elif lowered == _HEADER:
                        custom_id = line[20:].strip().decode()
                if len(rest) < length:
                    return
                self.buf = rest[length:]
                if lines[0].startswith(b"GET /"):
                    body = tally.everything() if lines[0].startswith(b"GET /counts") else tally.totals()
                    self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                    continue
                if custom_id is not None:
                    tally.add("webhook", custom_id)
                self.transport.write(_OK)

    return Receiver


def _consume(tally: _Tally, url: str, queue: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    channel.basic_qos(prefetch_count=2000)

    def on_message(_ch: object, _method: object, props: pika.BasicProperties, _body: bytes) -> None:
        tally.add("queue", str((props.headers or {}).get("x-batcher-custom-id")))

    channel.basic_consume(queue, on_message, auto_ack=True)
    channel.start_consuming()


def serve(port: int, rabbitmq_url: str, queue: str) -> None:
    tally = _Tally()
    threading.Thread(target=_consume, args=(tally, rabbitmq_url, queue), daemon=True).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_receiver_protocol(tally), "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


class Sinks:
    """The sink process, seen from the harness: its webhook URL and its counts."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.webhook_url = f"{self.base}/hook"

    def totals(self) -> dict:
        return httpx.get(f"{self.base}/totals", timeout=30).json()

    def counts(self) -> dict[str, dict[str, int]]:
        return httpx.get(f"{self.base}/counts", timeout=120).json()


@contextlib.contextmanager
def sinks(port: int, rabbitmq_url: str, queue: str, pids: list[int]) -> Iterator[Sinks]:
    argv = [sys.executable, "-m", "bench.soak.sinks", str(port), rabbitmq_url, queue]
    proc = subprocess.Popen(argv)
    pids.append(proc.pid)
    found = Sinks(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                found.totals()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the sink process did not start") from None
                time.sleep(0.1)
        yield found
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
