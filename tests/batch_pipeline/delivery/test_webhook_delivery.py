"""Webhook delivery end to end: a real Postgres, real local receivers, the real deliverer."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from batch_pipeline.delivery.deliverer import deliver_batch
from tests.batch_pipeline.delivery.conftest import (
    attempts_of,
    batch_state,
    body_json,
    options,
    requests_of,
    result_line,
    seed_batch,
    webhook,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def run(db_url: str, batch_id: int, **kw: object):
    return asyncio.run(deliver_batch(db_url, batch_id, options(**kw)))


def test_delivers_every_result_with_the_seed_headers_and_settles_the_batch(db_url, receiver_factory) -> None:
    rx = receiver_factory()
    batch_id, ids = seed_batch(db_url, [webhook(rx.url)] * 3, failed=frozenset({2}))
    report = run(db_url, batch_id)
    assert report.attempts == 3
    assert report.batch_state == "delivered"  # failed at OpenAI but delivered counts as delivered
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivered", "delivered", "failed"]
    for i, rid in enumerate(ids):
        (hit,) = rx.hits[str(rid)]
        cid = f"b{batch_id}-r{i}"
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["idempotency-key"] == f"batcher:req:{rid}"
        assert hit.headers["x-batcher-custom-id"] == cid
        assert body_json(hit) == result_line(cid, failed=i == 2)  # the OpenAI line, error included
        (attempt,) = attempts_of(db_url, rid)
        assert (attempt["outcome"], attempt["http_status"]) == ("success", 200)
        assert attempt["delivery_config"] == webhook(rx.url)
    assert batch_state(db_url, batch_id) == "delivered"


def test_fails_twice_then_succeeds_with_a_stable_signed_webhook_id(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda seen, _req: (503, {}) if seen < 2 else (200, {}))
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
    run(db_url, batch_id, signing_secret=SECRET)
    (req,) = requests_of(db_url, batch_id)
    assert (req["state"], req["delivery_attempt_count"], req["delivery_retries"]) == ("delivered", 3, 0)
    outcomes = [(a["outcome"], a["http_status"]) for a in attempts_of(db_url, rid)]
    assert outcomes == [("http_status_not_2xx", 503)] * 2 + [("success", 200)]
    hits = rx.hits[str(rid)]
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    verifier = Webhook(SECRET)
    for hit in hits:  # an independent implementation accepts every attempt's signature
        assert verifier.verify(hit.body, hit.headers) == body_json(hit)
    tampered = dict(hits[0].headers, **{"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()})
    with pytest.raises(WebhookVerificationError):
        verifier.verify(hits[0].body, tampered)


def test_retries_exhausted_means_delivery_failed(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda *_: (500, {}))
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
    report = run(db_url, batch_id, schedule=(0.0, 0.0))
    assert rx.total() == 3  # first attempt + one per schedule entry
    (req,) = requests_of(db_url, batch_id)
    assert (req["state"], req["delivery_retries"]) == ("delivery_failed", 0)
    assert report.batch_state == batch_state(db_url, batch_id) == "delivery_failed"
    assert attempts_of(db_url, rid)[-1]["error_msg"] == "answer 500"


def test_disable_delivery_retry_means_one_attempt(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda *_: (503, {}))
    batch_id, _ = seed_batch(db_url, [webhook(rx.url)])
    run(db_url, batch_id, disable_retry=True)
    assert rx.total() == 1
    assert requests_of(db_url, batch_id)[0]["state"] == "delivery_failed"


def test_410_and_other_4xx_are_final(db_url, receiver_factory) -> None:
    gone = receiver_factory(lambda *_: (410, {}))
    bad = receiver_factory(lambda *_: (422, {}))
    good = receiver_factory()
    batch_id, _ = seed_batch(db_url, [webhook(gone.url), webhook(bad.url), webhook(good.url)])
    report = run(db_url, batch_id)
    assert (gone.total(), bad.total()) == (1, 1)
    assert [r["state"] for r in requests_of(db_url, batch_id)] == [
        "delivery_failed",
        "delivery_failed",
        "delivered",
    ]
    assert report.batch_state == "partially_delivered"


def test_redirect_is_not_followed_and_is_final(db_url, receiver_factory) -> None:
    target = receiver_factory()
    rx = receiver_factory(lambda *_: (301, {"Location": target.url}))
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
    run(db_url, batch_id)
    assert (rx.total(), target.total()) == (1, 0)
    (attempt,) = attempts_of(db_url, rid)
    assert (attempt["outcome"], attempt["http_status"]) == ("http_status_not_2xx", 301)
    assert "not followed" in attempt["error_msg"]
    assert requests_of(db_url, batch_id)[0]["state"] == "delivery_failed"


def test_429_retry_after_sets_the_next_attempt(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda *_: (429, {"Retry-After": "120"}))
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
    report = run(db_url, batch_id, schedule=(1.0, 3600.0))
    assert rx.total() == 1  # the retry is not due within this run
    (req,) = requests_of(db_url, batch_id)
    (attempt,) = attempts_of(db_url, rid)
    assert (req["state"], req["delivery_retries"]) == ("openai_processed", 1)
    wait = req["next_attempt_at"] - attempt["attempted_at"]
    assert timedelta(seconds=115) < wait < timedelta(seconds=130)  # Retry-After beat the 1 s step
    assert report.batch_state is None and batch_state(db_url, batch_id) == "delivering"


def test_a_hanging_receiver_times_out_and_is_retried_later(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda *_: "hang")
    batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
    run(db_url, batch_id, read_timeout=0.3, schedule=(60.0,))
    (attempt,) = attempts_of(db_url, rid)
    assert attempt["outcome"] == "timeout"
    assert attempt["duration_ms"] < 5000
    assert requests_of(db_url, batch_id)[0]["state"] == "openai_processed"


def test_connection_refused_is_a_connection_error(db_url) -> None:
    from tests.conftest import free_port

    batch_id, (rid,) = seed_batch(db_url, [webhook(f"http://127.0.0.1:{free_port()}/nothing")])
    run(db_url, batch_id, disable_retry=True)
    assert attempts_of(db_url, rid)[0]["outcome"] == "connection_error"
