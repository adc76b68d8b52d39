"""``POST /api/openai/webhook``: signatures made with the ``standardwebhooks`` package (what OpenAI uses),
verified by the OpenAI SDK's own verifier; duplicates ignored; off without OPENAI_WEBHOOK_SECRET.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.batch_pipeline.admin.helpers import add_batch, query
from tests.intake_api.conftest import assert_error, serve

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


def signed(event: dict[str, Any], webhook_id: str, secret: str = SECRET, at: float | None = None) -> dict:
    """The body and headers OpenAI would send for ``event``."""
    body = json.dumps(event)
    when = datetime.fromtimestamp(at if at is not None else time.time(), tz=UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body),
        "content-type": "application/json",
    }
    return {"content": body.encode(), "headers": headers}


def batch_event(openai_batch_id: str, kind: str = "batch.completed") -> dict[str, Any]:
    return {
        "id": "evt_1",
        "object": "event",
        "type": kind,
        "created_at": int(time.time()),
        "data": {"id": openai_batch_id},
    }


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[httpx.Client]:
    # With API_TOKEN set too: the receiver must not need it (OpenAI cannot send it).
    with serve(tmp_path, db_url, openai_webhook_secret=SECRET, api_token="s3cret") as c:
        yield c


def due(db_url: str) -> dict[int, bool]:
    return {
        r["id"]: r["due"]
        for r in query(db_url, "SELECT id, next_check_at <= now() AS due FROM batchman.batches")
    }


def test_batch_event_makes_the_next_check_immediate_and_duplicates_are_ignored(client, db_url: str) -> None:
    ours = add_batch(db_url, "openai_processing", openai_batch_id="batch_abc", next_check_at="2999-01-01")
    other = add_batch(db_url, "cancelling", openai_batch_id="batch_other", next_check_at="2999-01-01")

    resp = client.post("/api/openai/webhook", **signed(batch_event("batch_abc"), "wh_1"))
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    assert due(db_url) == {ours: True, other: False}

    query(db_url, "UPDATE batchman.batches SET next_check_at = '2999-01-01' RETURNING id")
    again = client.post("/api/openai/webhook", **signed(batch_event("batch_abc"), "wh_1"))
    assert again.status_code == 200 and again.json() == {"status": "ignored"}
    assert due(db_url) == {ours: False, other: False}

    events = query(
        db_url, "SELECT webhook_id, event_type, openai_batch_id FROM batchman.openai_webhook_events"
    )
    assert events == [{"webhook_id": "wh_1", "event_type": "batch.completed", "openai_batch_id": "batch_abc"}]


def test_other_events_and_unknown_batches_are_acknowledged(client, db_url: str) -> None:
    for i, event in enumerate(
        [
            batch_event("batch_unknown", "batch.expired"),
            {"id": "evt_2", "object": "event", "type": "response.completed", "data": {"id": "resp_1"}},
            {"id": "evt_3", "object": "event", "type": "eval.run.succeeded", "data": {}},
        ]
    ):
        resp = client.post("/api/openai/webhook", **signed(event, f"wh_{i}"))
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}, resp.text
    assert len(query(db_url, "SELECT * FROM batchman.openai_webhook_events")) == 3


def test_bad_signatures_are_400_and_change_nothing(client, db_url: str) -> None:
    batch_id = add_batch(db_url, "openai_processing", openai_batch_id="batch_abc", next_check_at="2999-01-01")
    good = signed(batch_event("batch_abc"), "wh_1")
    cases = [
        signed(batch_event("batch_abc"), "wh_1", secret=OTHER_SECRET),
        {
            **good,
            "content": good["content"].replace(b"batch_abc", b"batch_xyz"),
        },  # body changed after signing
        {**good, "headers": {**good["headers"], "webhook-id": "wh_2"}},  # replayed under another id
        signed(batch_event("batch_abc"), "wh_1", at=time.time() - 3600),  # too old
        {**good, "headers": {k: v for k, v in good["headers"].items() if k != "webhook-signature"}},
        {**good, "headers": {**good["headers"], "webhook-timestamp": "soon"}},
    ]
    for case in cases:
        assert_error(client.post("/api/openai/webhook", **case), 400, "invalid_signature")
    assert due(db_url) == {batch_id: False}
    assert query(db_url, "SELECT * FROM batchman.openai_webhook_events") == []


def test_signed_garbage_is_400_and_huge_bodies_413(client) -> None:
    not_json = signed(batch_event("b"), "wh_1")
    body = b"not json"
    when = datetime.now(tz=UTC)
    not_json["content"] = body
    not_json["headers"]["webhook-signature"] = Webhook(SECRET).sign("wh_1", when, body.decode())
    not_json["headers"]["webhook-timestamp"] = str(int(when.timestamp()))
    assert_error(client.post("/api/openai/webhook", **not_json), 400, "invalid_payload")
    no_type = signed({"id": "evt", "data": {"id": "b"}}, "wh_2")
    assert_error(client.post("/api/openai/webhook", **no_type), 400, "invalid_payload")
    nul = signed(batch_event("batch_\x00"), "wh_3")
    assert_error(client.post("/api/openai/webhook", **nul), 400, "invalid_payload")
    assert_error(client.post("/api/openai/webhook", content=b"x" * 100_000), 413, "payload_too_large")


def test_off_without_a_secret(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        assert_error(c.post("/api/openai/webhook", **signed(batch_event("b"), "wh_1")), 404, "not_found")
        responses = c.get("/api/openapi").json()["paths"]["/api/openai/webhook"]["post"]["responses"]
    assert {"200", "400", "404", "413"} <= set(responses)


@pytest.mark.parametrize("header", ["webhook-signature", "webhook-id", "webhook-timestamp"])
def test_non_ascii_signature_headers_are_400_not_500(client, db_url: str, header: str) -> None:
    good = signed(batch_event("batch_abc"), "wh_1")
    # Raw header bytes (httpx would refuse to encode a non-ASCII str): "v1,é" in UTF-8.
    headers = [(k.encode(), v.encode()) for k, v in good["headers"].items() if k != header]
    headers.append((header.encode(), "v1,é".encode()))
    resp = client.post("/api/openai/webhook", content=good["content"], headers=headers)
    assert_error(resp, 400, "invalid_signature")
    assert query(db_url, "SELECT * FROM batchman.openai_webhook_events") == []
