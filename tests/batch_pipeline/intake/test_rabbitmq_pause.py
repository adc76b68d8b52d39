"""Intake pause and the RabbitMQ consumer (real broker, real Postgres): while paused it holds no
consumer on the queue, so messages stay there; after resume it takes them."""

from __future__ import annotations

import contextlib
import json
import time

import pika
import pytest

from batch_pipeline.intake.rabbitmq import IntakeConsumer
from tests.batch_pipeline.intake.test_rabbitmq import consumer_for, publish, queues, running, wait_for
from tests.intake_api.conftest import count_rows, execute, valid_request

__all__ = ["queues"]  # the fixture, imported for the tests below


def queue_state(rabbitmq_url: str, queue: str) -> tuple[int, int]:
    """(messages ready in the queue, consumers on it)."""
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as conn:
        method = conn.channel().queue_declare(queue, passive=True).method
        return method.message_count, method.consumer_count


def set_paused(db_url: str, paused: bool) -> None:
    execute(db_url, "UPDATE batchman.intake_control SET paused = %s", (paused,))


def reads_of_the_flag_since(c: IntakeConsumer, since: float) -> bool:
    return c._pause_read_at > since


def messages(prefix: str, n: int) -> list[bytes]:
    return [json.dumps(valid_request(f"{prefix}-{i}")).encode() for i in range(n)]


@pytest.mark.rabbitmq
def test_pause_stops_consuming_leaves_messages_queued_and_resume_takes_them(
    tmp_path, db_url, rabbitmq_url, queues
) -> None:
    q = queues("pause")
    publish(rabbitmq_url, q, messages("before", 2))
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q)) as c:
        wait_for(lambda: count_rows(db_url) == 2)
        set_paused(db_url, True)
        wait_for(lambda: queue_state(rabbitmq_url, q)[1] == 0)  # its consumer cancelled
        publish(rabbitmq_url, q, messages("while", 5))
        # The consumer has read the flag again (twice) and still found it set: nothing was taken.
        mark = time.monotonic()
        wait_for(lambda: reads_of_the_flag_since(c, mark))
        mark = c._pause_read_at
        wait_for(lambda: reads_of_the_flag_since(c, mark))
        assert queue_state(rabbitmq_url, q) == (5, 0)
        assert count_rows(db_url) == 2

        set_paused(db_url, False)
        wait_for(lambda: count_rows(db_url) == 7)
        wait_for(lambda: queue_state(rabbitmq_url, q) == (0, 1))
    assert c.counts["accepted"] == 7 and c.counts["rejected"] == 0


@pytest.mark.rabbitmq
def test_a_consumer_started_while_paused_waits_for_resume(tmp_path, db_url, rabbitmq_url, queues) -> None:
    q = queues("paused-start")
    set_paused(db_url, True)
    publish(rabbitmq_url, q, messages("early", 3))
    with running(consumer_for(tmp_path, db_url, rabbitmq_url, q)) as c:
        wait_for(lambda: reads_of_the_flag_since(c, float("-inf")))
        mark = c._pause_read_at
        wait_for(lambda: reads_of_the_flag_since(c, mark))
        assert queue_state(rabbitmq_url, q) == (3, 0)
        assert count_rows(db_url) == 0
        set_paused(db_url, False)
        wait_for(lambda: count_rows(db_url) == 3)
