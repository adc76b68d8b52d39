"""The load: the plan's requests through the three doors at once (bulk POSTs, single POSTs at a fixed
concurrency, persistent confirmed messages on the RabbitMQ intake queue), each door in its own thread.

A request counts as acknowledged when its door said so: a 202 to a single POST, ``accepted`` in a bulk
answer, the broker's commit of a transaction of messages (the consumer acks only after its own commit)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson
import pika

from bench.soak.plan import Plan, custom_id, make_request


@dataclass
class DoorResult:
    door: str
    sent: int = 0
    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.acknowledged) / max(self.finished - self.started, 1e-9)


Make = Callable[[str, int], dict]
_RABBIT_CHUNK = 1000


def send_bulk(api: str, plan: Plan, make: Make, result: DoorResult) -> None:
    result.started = time.time()
    with httpx.Client(base_url=api, timeout=300) as client:
        for start in range(0, plan.bulk, plan.bulk_call_items):
            items = [make("bulk", i) for i in range(start, min(start + plan.bulk_call_items, plan.bulk))]
            result.sent += len(items)
            resp = client.post(
                "/api/requests/bulk",
                content=orjson.dumps(items),
                headers={"content-type": "application/json"},
            )
            resp.raise_for_status()
            for item, outcome in zip(items, resp.json()["results"], strict=True):
                ok = outcome.get("status") == "accepted"
                (result.acknowledged if ok else result.refused).append(item["custom_id"])
    result.finished = time.time()


def send_singles(api: str, plan: Plan, make: Make, result: DoorResult) -> None:
    async def run() -> None:
        limits = httpx.Limits(max_connections=plan.single_concurrency)
        async with httpx.AsyncClient(base_url=api, limits=limits, timeout=60) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(plan.singles):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    item = make("single", queue.get_nowait())
                    result.sent += 1
                    resp = await client.post("/api/requests", content=orjson.dumps(item))
                    ok = resp.status_code == 202
                    (result.acknowledged if ok else result.refused).append(item["custom_id"])

            await asyncio.gather(*(worker() for _ in range(plan.single_concurrency)))

    result.started = time.time()
    asyncio.run(run())
    result.finished = time.time()


def send_rabbit(url: str, queue: str, plan: Plan, make: Make, result: DoorResult) -> None:
    """Persistent messages in broker transactions of ``_RABBIT_CHUNK``: a chunk is acknowledged when
    its commit returns (per-message publisher confirms on a blocking channel cost a round trip each)."""
    result.started = time.time()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.tx_select()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        for start in range(0, plan.rabbit, _RABBIT_CHUNK):
            chunk = [make("rabbit", i) for i in range(start, min(start + _RABBIT_CHUNK, plan.rabbit))]
            for item in chunk:
                channel.basic_publish("", queue, orjson.dumps(item), props)
            result.sent += len(chunk)
            channel.tx_commit()
            result.acknowledged.extend(item["custom_id"] for item in chunk)
    finally:
        conn.close()
    result.finished = time.time()


def send_marker(api: str, plan: Plan, webhook_url: str, queue: str, i: int, marker: str) -> str:
    """One request carrying a simulator fault marker, as a single POST; its custom_id."""
    item = make_request(plan, "marker", i, webhook_url, queue, marker)
    resp = httpx.post(f"{api}/api/requests", content=orjson.dumps(item), timeout=60)
    assert resp.status_code == 202, resp.text
    return custom_id(plan, "marker", i)


def send_all(api: str, rabbitmq_url: str, input_queue: str, plan: Plan, make: Make) -> list[DoorResult]:
    """Every door at once; returns when all have finished."""
    doors = [DoorResult("bulk"), DoorResult("single"), DoorResult("rabbit")]
    targets = [
        (send_bulk, (api, plan, make, doors[0])),
        (send_singles, (api, plan, make, doors[1])),
        (send_rabbit, (rabbitmq_url, input_queue, plan, make, doors[2])),
    ]
    errors: list[BaseException] = []

    def guarded(fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported by the caller, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return doors
