"""RabbitMQ delivery against a real broker: properties, missing queue, no URL, connection cut mid-run."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.delivery.rabbitmq import RabbitPublisher
from tests.batch_pipeline.delivery.conftest import (
    TcpProxy,
    attempts_of,
    drain,
    options,
    requests_of,
    result_line,
    seed_batch,
    webhook,
)


def to_queue(name: str) -> dict[str, str]:
    return {"type": "rabbitmq", "rabbitmq_queue": name}


def test_publishes_persistent_messages_with_the_seed_properties(db_url, rabbitmq_url, queues) -> None:
    q = queues()
    batch_id, ids = seed_batch(db_url, [to_queue(q)] * 3, failed=frozenset({1}))
    report = asyncio.run(deliver_batch(db_url, batch_id, options(rabbitmq_url=rabbitmq_url)))
    assert report.batch_state == "delivered"
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivered", "failed", "delivered"]
    messages = drain(rabbitmq_url, q)
    assert len(messages) == 3
    by_id = {props.message_id: (props, body) for props, body in messages}
    for i, rid in enumerate(ids):
        props, body = by_id[f"batcher:req:{rid}"]
        assert props.delivery_mode == 2 and props.content_type == "application/json"
        assert props.headers == {
            "x-batcher-request-id": rid,
            "x-batcher-custom-id": f"b{batch_id}-r{i}",
            "idempotency-key": f"batcher:req:{rid}",
        }
        assert json.loads(body) == result_line(f"b{batch_id}-r{i}", failed=i == 1)
        assert attempts_of(db_url, rid)[0]["outcome"] == "success"


def test_missing_queue_is_a_final_queue_not_found(db_url, rabbitmq_url, queues) -> None:
    q = queues()
    missing = q + "-missing"
    batch_id, ids = seed_batch(db_url, [to_queue(missing), to_queue(q)])
    report = asyncio.run(deliver_batch(db_url, batch_id, options(rabbitmq_url=rabbitmq_url)))
    assert [a["outcome"] for a in attempts_of(db_url, ids[0])] == ["queue_not_found"]
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivery_failed", "delivered"]
    assert report.batch_state == "partially_delivered"
    assert len(drain(rabbitmq_url, q)) == 1


def test_without_rabbitmq_url_the_attempt_says_not_configured(db_url, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, ids = seed_batch(db_url, [to_queue("anything"), webhook(rx.url)])
    asyncio.run(deliver_batch(db_url, batch_id, options(rabbitmq_url=None, schedule=(3600.0,))))
    (attempt,) = attempts_of(db_url, ids[0])
    assert attempt["outcome"] == "rabbitmq_not_configured"
    assert "RABBITMQ_URL" in attempt["error_msg"]
    # Transient: delivered by a later wave once RABBITMQ_URL is set; the webhook went out meanwhile.
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["openai_processed", "delivered"]


def test_connection_cut_mid_delivery_still_delivers_everything(db_url, rabbitmq_url, queues) -> None:
    q = queues()
    n = 3000
    batch_id, ids = seed_batch(db_url, [to_queue(q)] * n)
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672, cut_after_bytes=200_000)
    try:
        report = asyncio.run(
            deliver_batch(db_url, batch_id, options(rabbitmq_url=proxy.url(rabbitmq_url), claim_size=1000))
        )
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert report.batch_state == "delivered"
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
    received = {props.message_id for props, _ in drain(rabbitmq_url, q)}
    assert received == {f"batcher:req:{rid}" for rid in ids}  # at least once: duplicates allowed


def test_publisher_reconnects_after_a_cut_between_batches(rabbitmq_url, queues) -> None:
    from batch_pipeline.delivery.attempt import Delivery

    q = queues()
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672)
    publisher = RabbitPublisher(proxy.url(rabbitmq_url), window=50)
    try:
        first = publisher.publish_batch([Delivery(i, f"c{i}", to_queue(q), b"{}") for i in range(100)])
        proxy.cut()
        second = publisher.publish_batch([Delivery(i, f"c{i}", to_queue(q), b"{}") for i in range(100, 200)])
    finally:
        publisher.close()
        proxy.close()
    assert {a.outcome for a in first + second} == {"success"}
    assert publisher.reconnects >= 1
    assert len({p.message_id for p, _ in drain(rabbitmq_url, q)}) == 200
