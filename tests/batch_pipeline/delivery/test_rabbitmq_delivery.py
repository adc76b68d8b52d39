"""RabbitMQ delivery against a real broker: properties, missing queue, no URL, connection cut mid-run,
a broker outage longer than a restart."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
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
    rows,
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
    from batch_pipeline.store.records import Delivery

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


def test_a_twelve_second_outage_mid_run_is_ridden_out_in_the_same_run(db_url, rabbitmq_url, queues) -> None:
    q = queues()
    n = 400  # 8 chunks of 50; each message is ~380 client→broker bytes
    batch_id, ids = seed_batch(db_url, [to_queue(q)] * n)
    # Down after ~160 messages, for 12 s: longer than the old 5 tries (8.7 s) rode out, well inside
    # the 60 s default. Every connect during the outage is refused.
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672, cut_after_bytes=60_000, down_for=12.0)
    try:
        report = asyncio.run(
            deliver_batch(db_url, batch_id, options(rabbitmq_url=proxy.url(rabbitmq_url), claim_size=50))
        )
    finally:
        proxy.close()
    # One run, one attempt per request, all successful and all recorded.
    assert report.outcomes == Counter({"success": n}) and report.attempts == n
    assert report.batch_state == "delivered"
    assert proxy.cuts == 1 and proxy.refused >= 1  # the publisher really retried while it was down
    assert proxy.accepted >= 2  # and came back on a new connection once it was up
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
    recorded = rows(
        db_url,
        "SELECT request_id, outcome FROM batchman.delivery_attempts WHERE request_id = ANY(%s)",
        (ids,),
    )
    assert sorted(r["request_id"] for r in recorded) == ids and {r["outcome"] for r in recorded} == {
        "success"
    }

    # Consumer side: every message_id at least once. Messages unconfirmed at the cut are published
    # again (at-least-once), so a duplicate is allowed only as the same message: same message_id and
    # idempotency key, same bytes.
    messages = drain(rabbitmq_url, q)
    per_id = Counter(props.message_id for props, _ in messages)
    assert set(per_id) == {f"batcher:req:{rid}" for rid in ids}
    custom = {f"batcher:req:{rid}": f"b{batch_id}-r{i}" for i, rid in enumerate(ids)}
    for props, body in messages:
        assert props.headers["idempotency-key"] == props.message_id
        assert json.loads(body) == result_line(custom[props.message_id])
    assert len(messages) - n == sum(c - 1 for c in per_id.values())  # the duplicates, if any


def test_after_giving_up_later_chunks_go_through_once_the_broker_is_back(rabbitmq_url, queues) -> None:
    from batch_pipeline.store.records import Delivery

    q = queues()
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672)
    publisher = RabbitPublisher(proxy.url(rabbitmq_url), window=50, reconnect_seconds=0.5)

    def chunk(start: int) -> list:
        return publisher.publish_batch(
            [Delivery(i, f"c{i}", to_queue(q), b"{}") for i in range(start, start + 20)]
        )

    try:
        assert {a.outcome for a in chunk(0)} == {"success"}
        proxy.down(float("inf"))  # down until up(): no race against the budget
        given_up = chunk(100)  # rides out the 0.5 s budget, then fails
        refused = proxy.refused
        still_down = chunk(200)  # one try, no second wait of the budget
        proxy.up()
        back = chunk(300)
    finally:
        publisher.close()
        proxy.close()
    assert {(a.outcome, a.transient) for a in given_up + still_down} == {("connection_error", True)}
    assert refused >= 1 and proxy.refused == refused + 1  # the chunk after giving up tried once
    assert {a.outcome for a in back} == {"success"}
    assert publisher.unavailable is None
    ids = {p.message_id for p, _ in drain(rabbitmq_url, q)}
    assert ids == {f"batcher:req:{i}" for i in [*range(20), *range(300, 320)]}
