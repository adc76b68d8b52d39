"""Receivers that need credentials: headers from the delivery_config on every attempt, and no
credential copied into attempt rows or error texts."""

from __future__ import annotations

import asyncio

from batch_pipeline.delivery.deliverer import deliver_batch
from tests.batch_pipeline.delivery.conftest import attempts_of, options, requests_of, rows, seed_batch

TOKEN = "Bearer tok-7f3a9c"


def test_headers_go_with_every_attempt_and_stay_off_the_attempt_rows(db_url, receiver_factory) -> None:
    rx = receiver_factory(lambda seen, _req: (503, {}) if seen == 0 else (200, {}))
    cfg = {"type": "webhook", "webhook_url": rx.url, "headers": {"Authorization": TOKEN, "X-Api-Key": "k-42"}}
    batch_id, (rid,) = seed_batch(db_url, [cfg])
    asyncio.run(deliver_batch(db_url, batch_id, options()))
    hits = rx.hits[str(rid)]
    assert len(hits) == 2
    for hit in hits:
        assert hit.headers["Authorization"] == TOKEN
        assert hit.headers["X-Api-Key"] == "k-42"
        assert hit.headers["Content-Type"] == "application/json"  # ours are not displaced
    assert [r["state"] for r in requests_of(db_url, batch_id)] == ["delivered"]
    for attempt in attempts_of(db_url, rid):
        assert attempt["delivery_config"] == {"type": "webhook", "webhook_url": rx.url}
    (stored,) = rows(db_url, "SELECT delivery_config FROM batchman.requests WHERE id = %s", (rid,))
    assert stored["delivery_config"]["headers"]["Authorization"] == TOKEN  # kept for the next attempt


def test_a_token_in_the_url_is_not_copied_into_the_error_text(db_url, receiver_factory) -> None:
    secret = "s3cr3t-token-value"

    def redirect(_seen: int, req) -> tuple[int, dict[str, str]]:
        # The usual http -> https move keeps the query: the Location quotes the token.
        return 301, {"Location": f"https://example.com{req.path_qs}"}

    rx = receiver_factory(redirect)
    cfg = {"type": "webhook", "webhook_url": f"{rx.url}?access_token={secret}"}
    batch_id, (rid,) = seed_batch(db_url, [cfg])
    asyncio.run(deliver_batch(db_url, batch_id, options(disable_retry=True)))
    (attempt,) = attempts_of(db_url, rid)
    assert attempt["http_status"] == 301
    assert "redirect to https://example.com/hook?access_token=***" in attempt["error_msg"]
    assert secret not in attempt["error_msg"]
