"""The RabbitMQ intake consumer against a real broker and Postgres: acks, rejects, DLX, outages."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pika
import psycopg
import pytest

from batch_pipeline.intake.rabbitmq import IntakeConsumer
from tests.batch_pipeline.delivery.conftest import TcpProxy, drain, queue_depth, queue_maker
from tests.conftest import make_settings
from tests.intake_api.conftest import count_rows, fetch_row, valid_request


def publish(rabbitmq_url: str, queue: str, bodies: list[bytes]) -> None:
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition the test caused (not for time to pass); fail loudly on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@contextlib.contextmanager
def running(consumer: IntakeConsumer) -> Iterator[IntakeConsumer]:
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(15)
        assert not thread.is_alive(), "consumer did not stop"


def consumer_for(tmp_path, db_url: str, url: str, queue: str, **settings: object) -> IntakeConsumer:
    s = make_settings(tmp_path, database_url=db_url, rabbitmq_intake_batch_size=4, **settings)
    return IntakeConsumer(s, db_url, url=url, queue=queue)


@pytest.fixture
def queues(rabbitmq_url: str) -> Iterator[Callable[..., str]]:
    yield from queue_maker(rabbitmq_url)


def handled(c: IntakeConsumer) -> int:
    return c.counts["accepted"] + c.counts["duplicate"] + c.counts["rejected"]


@pytest.mark.rabbitmq
def test_valid_duplicate_and_poison_messages_drain_the_queue(tmp_path, db_url, rabbitmq_url, queues) -> None:
    dlq = queues("dlq")
    q = queues("in", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    a, b = valid_request("mq-a"), valid_request("mq-b")
    bodies = [
        json.dumps(a).encode(),
        b"this is not json",
        json.dumps(valid_request("mq-bad", method="GET")).encode(),  # invalid
        json.dumps(a).encode(),  # duplicate custom_id
        b"[1, 2, 3]",  # JSON, but not a request object
        b"\xff\xfe",  # not even UTF-8
        json.dumps(b).encode(),
    ]
    publish(rabbitmq_url, q, bodies)
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q)) as c:
        wait_for(lambda: handled(c) == len(bodies))
    assert c.counts == {"accepted": 2, "duplicate": 1, "rejected": 4, "requeued": 0}
    assert queue_depth(rabbitmq_url, q) == 0  # nothing left, nothing requeued forever
    assert sorted(body for _, body in drain(rabbitmq_url, dlq)) == sorted(
        [bodies[1], bodies[2], bodies[4], bodies[5]]
    )  # rejected without requeue → dead-lettered by the queue's DLX
    assert count_rows(db_url) == 2
    stored = fetch_row(db_url, "mq-a")
    assert stored is not None and stored["delivery_config"] == a["delivery_config"]


@pytest.mark.rabbitmq
def test_database_outage_requeues_and_nothing_is_lost(tmp_path, db_url, rabbitmq_url, queues) -> None:
    q = queues("in")
    publish(rabbitmq_url, q, [json.dumps(valid_request(f"out-{i}")).encode() for i in range(6)])
    consumer = consumer_for(tmp_path, db_url, rabbitmq_url, q)
    consumer.dsn = db_url.rsplit("/", 1)[0] + "/no_such_database"  # the database is "down"
    with running(consumer) as c:
        wait_for(lambda: c.counts["requeued"] > 0)
        assert count_rows(db_url) == 0
        c.dsn = db_url  # the database is back
        wait_for(lambda: c.counts["accepted"] == 6)
    assert queue_depth(rabbitmq_url, q) == 0
    assert count_rows(db_url) == 6


@pytest.mark.rabbitmq
def test_consumer_reconnects_after_the_connection_is_cut(tmp_path, db_url, rabbitmq_url, queues) -> None:
    q = queues("in")
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672)
    try:
        with running(consumer_for(tmp_path, db_url, proxy.url(rabbitmq_url), q)) as c:
            publish(rabbitmq_url, q, [json.dumps(valid_request(f"cut-{i}")).encode() for i in range(5)])
            wait_for(lambda: c.counts["accepted"] == 5)
            proxy.cut()
            publish(rabbitmq_url, q, [json.dumps(valid_request(f"cut-{i}")).encode() for i in range(5, 10)])
            wait_for(lambda: c.counts["accepted"] == 10)
    finally:
        proxy.close()
    assert count_rows(db_url) == 10 and queue_depth(rabbitmq_url, q) == 0


@pytest.mark.rabbitmq
def test_main_stops_cleanly_on_sigterm(tmp_path, db_url, rabbitmq_url, queues) -> None:
    import os
    import signal
    import subprocess
    import sys

    q = queues("in")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "RABBITMQ_URL": rabbitmq_url,
        "RABBITMQ_INPUT_QUEUE": q,
        "OPENAI_API_KEY": "",
    }
    code = "import sys; from batch_pipeline.intake.rabbitmq import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
    try:
        publish(rabbitmq_url, q, [json.dumps(valid_request("term-1")).encode()])
        wait_for(lambda: count_rows(db_url) == 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert queue_depth(rabbitmq_url, q) == 0


class RecordedWaits:
    """Stands in for the consumer's reconnect wait: records each wait instead of sleeping through it
    (a short real pause keeps the retry loop from hammering the broker) and stops after ``stop_after``.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.consumer: IntakeConsumer | None = None

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.stop_after is not None and len(self.waits) >= self.stop_after and self.consumer:
            self.consumer.stop()
        time.sleep(0.02)


@pytest.mark.rabbitmq
def test_missing_queue_is_retried_with_growing_waits(tmp_path, db_url, rabbitmq_url) -> None:
    import uuid

    waits = RecordedWaits(stop_after=7)
    s = make_settings(tmp_path, database_url=db_url)
    consumer = IntakeConsumer(
        s, db_url, url=rabbitmq_url, queue=f"batchman-missing-{uuid.uuid4().hex[:10]}", sleep=waits
    )
    waits.consumer = consumer
    with running(consumer):
        wait_for(lambda: len(waits.waits) >= 7)
    # Each 404 doubles the wait up to the cap; it used to be reset on every successful connect.
    assert waits.waits[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.rabbitmq
def test_backoff_starts_over_once_the_queue_appears(tmp_path, db_url, rabbitmq_url) -> None:
    import uuid

    name = f"batchman-late-{uuid.uuid4().hex[:10]}"
    waits = RecordedWaits()
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672)
    s = make_settings(tmp_path, database_url=db_url, rabbitmq_intake_batch_size=4)
    consumer = IntakeConsumer(s, db_url, url=proxy.url(rabbitmq_url), queue=name, sleep=waits)
    try:
        with running(consumer) as c:
            wait_for(lambda: len(waits.waits) >= 3)  # the queue does not exist yet
            with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
                conn.channel().queue_declare(name, durable=True)
            publish(rabbitmq_url, name, [json.dumps(valid_request("late-1")).encode()])
            wait_for(lambda: c.counts["accepted"] == 1)
            before = len(waits.waits)
            proxy.cut()  # progress was made: the next outage starts from the first step again
            wait_for(lambda: len(waits.waits) > before)
            publish(rabbitmq_url, name, [json.dumps(valid_request("late-2")).encode()])
            wait_for(lambda: c.counts["accepted"] == 2)
    finally:
        proxy.close()
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
            conn.channel().queue_delete(name)
    assert waits.waits[:3] == [1.0, 2.0, 4.0]
    assert waits.waits[before] == 1.0
    assert count_rows(db_url) == 2


def fill_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial batch waits up to 1 s (not 50 ms) for more messages: messages published before the
    consumer starts then make one full batch however the broker spaces its deliveries."""
    from batch_pipeline.intake import rabbitmq as intake_rabbitmq

    monkeypatch.setattr(intake_rabbitmq, "FLUSH_SECONDS", 1.0)


def stored_custom_ids(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        return sorted(r[0] for r in conn.execute("SELECT custom_id FROM batchman.requests"))


@pytest.mark.rabbitmq
def test_a_row_the_database_refuses_is_isolated_and_the_rest_of_its_batch_stored(
    tmp_path, db_url, rabbitmq_url, queues, monkeypatch, caplog
) -> None:
    fill_batches(monkeypatch)
    # A row the database refuses (this test's database only): the batch's COPY fails as a whole, as it
    # would for any row-specific refusal (a constraint, a value Postgres cannot store).
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "ALTER TABLE batchman.requests ADD CONSTRAINT test_refuses CHECK (custom_id <> 'one-poison')"
        )
    dlq = queues("dlq")
    q = queues("in", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    names = ["one-a", "one-b", "one-poison", "one-c"]
    bodies = [json.dumps(valid_request(n)).encode() for n in names]
    publish(rabbitmq_url, q, bodies)
    caplog.set_level(logging.INFO, logger="batch_pipeline.intake.rabbitmq")
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q)) as c:
        wait_for(lambda: handled(c) == len(names))
    assert "intake batch failed; retrying its 4 messages one by one" in caplog.text
    assert c.counts == {"accepted": 3, "duplicate": 0, "rejected": 1, "requeued": 0}
    assert stored_custom_ids(db_url) == ["one-a", "one-b", "one-c"]
    assert queue_depth(rabbitmq_url, q) == 0  # every good message acked
    assert [body for _, body in drain(rabbitmq_url, dlq)] == [bodies[2]]  # only the bad one rejected


@pytest.mark.rabbitmq
def test_a_database_that_refuses_every_write_requeues_instead_of_rejecting(
    tmp_path, db_url, rabbitmq_url, queues
) -> None:
    # Read-only, as a primary demoted by a failover is: every write fails with the same error. That is
    # the database's state, not a message's fault, so nothing may be rejected (dead-lettered, lost).
    dbname = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    dlq = queues("dlq")
    q = queues("in", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    names = [f"ro-{i}" for i in range(4)]
    publish(rabbitmq_url, q, [json.dumps(valid_request(n)).encode() for n in names])
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q)) as c:
        wait_for(lambda: c.counts["requeued"] >= len(names))
        assert c.counts["rejected"] == 0 and queue_depth(rabbitmq_url, dlq) == 0
        with psycopg.connect(db_url, autocommit=True) as conn:  # the database takes writes again
            conn.execute("SET default_transaction_read_only = off")  # this session is read-only too
            conn.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
        wait_for(lambda: c.counts["accepted"] == len(names))
    assert c.counts["rejected"] == 0 and queue_depth(rabbitmq_url, dlq) == 0
    assert stored_custom_ids(db_url) == names
    assert queue_depth(rabbitmq_url, q) == 0


@pytest.mark.rabbitmq
def test_connection_cut_after_commit_before_ack_redelivers_duplicates_and_loses_nothing(
    tmp_path, db_url, rabbitmq_url, queues, monkeypatch
) -> None:
    fill_batches(monkeypatch)
    q = queues("in")
    names = [f"ack-{i}" for i in range(4)]
    publish(rabbitmq_url, q, [json.dumps(valid_request(n)).encode() for n in names])
    proxy = TcpProxy(urlsplit(rabbitmq_url).port or 5672)
    waits = RecordedWaits()
    consumer = consumer_for(tmp_path, db_url, proxy.url(rabbitmq_url), q)
    consumer._sleep = waits
    cut_batch: list[tuple[int, list[str]]] = []  # (its size, what was stored when the link went)
    submit = consumer._submit

    async def submit_then_cut(objs: list[object]):
        outcomes = await submit(objs)  # committed
        if not cut_batch:
            # The network drops right after the commit, before a single ack of this batch is sent.
            cut_batch.append((len(objs), stored_custom_ids(db_url)))
            proxy.cut()
        return outcomes

    consumer._submit = submit_then_cut
    try:
        with running(consumer) as c:
            wait_for(lambda: c.counts["duplicate"] == len(names))
    finally:
        proxy.close()
    assert cut_batch == [(len(names), names)] and proxy.cuts == 1
    assert len(waits.waits) >= 1  # the consumer saw the connection go and reconnected
    # Every message of the cut batch came back and was recognised as already stored: acked, not
    # stored twice, nothing left in the queue.
    assert c.counts["rejected"] == 0
    assert stored_custom_ids(db_url) == names
    assert queue_depth(rabbitmq_url, q) == 0


@pytest.mark.rabbitmq
def test_messages_http_refuses_are_rejected_unstored_and_good_ones_beside_them_stored(
    tmp_path, db_url, rabbitmq_url, queues, monkeypatch, caplog
) -> None:
    # The consumer decodes as POST /api/requests does (fast path, then orjson), and applies its size
    # limit: json.loads took NaN, Infinity and 1e999 (stored as null) and a lone surrogate (which then
    # failed deep in validation), and any size.
    fill_batches(monkeypatch)
    max_bytes = 4096
    dlq = queues("dlq")
    q = queues("in", {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})

    def with_body(custom_id: str, value: str) -> bytes:
        text = json.dumps(valid_request(custom_id, body={"model": "m", "input": "hi", "x": "VALUE"}))
        return text.replace('"VALUE"', value).encode()

    def padded(custom_id: str, size: int) -> bytes:
        raw = json.dumps(valid_request(custom_id, body={"model": "m", "input": ""})).encode()
        raw = raw.replace(b'"input": ""', b'"input": "' + b"x" * (size - len(raw)) + b'"')
        assert len(raw) == size
        return raw

    bad = {
        "nan": with_body("mq-nan", "NaN"),
        "infinity": with_body("mq-inf", "-Infinity"),
        "huge-number": with_body("mq-1e999", "1e999"),
        "lone-surrogate": with_body("mq-surrogate", '"\\ud800"'),
        "oversize": padded("mq-oversize", max_bytes + 1),
    }
    good = [json.dumps(valid_request("mq-good-1")).encode(), padded("mq-good-at-limit", max_bytes)]
    bodies = [good[0], *bad.values(), good[1]]
    publish(rabbitmq_url, q, bodies)
    caplog.set_level(logging.INFO, logger="batch_pipeline.intake.rabbitmq")
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q, intake_max_body_bytes=max_bytes)) as c:
        wait_for(lambda: handled(c) == len(bodies))
    assert c.counts == {"accepted": 2, "duplicate": 0, "rejected": len(bad), "requeued": 0}
    assert stored_custom_ids(db_url) == ["mq-good-1", "mq-good-at-limit"]
    assert queue_depth(rabbitmq_url, q) == 0
    assert sorted(body for _, body in drain(rabbitmq_url, dlq)) == sorted(bad.values())
    assert f"{max_bytes + 1} bytes, over INTAKE_MAX_BODY_BYTES ({max_bytes})" in caplog.text
    assert caplog.text.count("rejected message (custom_id None, invalid)") == 4  # not JSON to orjson
    assert "intake failed on it" not in caplog.text  # refused as input, not isolated as a crash
