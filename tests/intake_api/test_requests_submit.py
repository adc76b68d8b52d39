"""``POST /api/requests``: acceptance, storage, every validation failure, size limits and concurrency."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from batch_pipeline.config import Settings
from batch_pipeline.intake.endpoints import SUPPORTED_URLS
from tests.intake_api.conftest import (
    TLS_CONTEXT,
    SharedApi,
    assert_error,
    count_rows,
    error_items,
    fetch_row,
    path_for,
    serve,
    valid_request,
    without,
)

DEFAULT_CUSTOM_ID_MAX: int = Settings.model_fields["custom_id_max_length"].default

# ---------------------------------------------------------------------------------------------------
# Accepted


def test_accepted_request_answers_202_with_only_the_custom_id_and_is_stored(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    req = valid_request(
        "store-1",
        body={
            "model": "gpt-4o-mini",
            "input": "Hello",
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}},
            "x_unknown_field": [1, {"nested": None}],
            "temperature": 0.2,
        },
    )
    resp = shared_client.post("/api/requests", json=req)
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"custom_id": "store-1"}

    row = fetch_row(shared_api.db_url, "store-1")
    assert row is not None
    assert row["endpoint"] == "/v1/responses"
    assert row["model"] == "gpt-4o-mini"
    assert row["state"] == "pending"
    assert row["batch_id"] is None
    assert row["result"] is None
    assert row["delivery_config"] == req["delivery_config"]
    # The stored payload is exactly the JSONL line for OpenAI: no delivery_config, body untouched.
    payload = json.loads(row["payload"])
    assert payload == {
        "custom_id": "store-1",
        "method": "POST",
        "url": "/v1/responses",
        "body": req["body"],
    }
    assert "\n" not in row["payload"]
    assert "delivery_config" not in row["payload"]
    assert row["payload_bytes"] == len(row["payload"].encode())
    assert row["estimated_tokens"] >= 1


def test_every_supported_url_is_accepted(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    assert len(SUPPORTED_URLS) >= 5
    for i, url in enumerate(SUPPORTED_URLS):
        resp = shared_client.post("/api/requests", json=valid_request(f"url-{i}", url=url))
        assert resp.status_code == 202, f"{url}: {resp.text}"
        row = fetch_row(shared_api.db_url, f"url-{i}")
        assert row is not None
        assert row["endpoint"] == url
        assert json.loads(row["payload"])["url"] == url


@pytest.mark.parametrize(
    "delivery_config",
    [
        {"type": "webhook", "webhook_url": "http://python-http-webhook:8080/webhook"},
        {"type": "webhook", "webhook_url": "https://api.example.com/webhook?auth=secret"},
        {"type": "webhook", "webhook_url": "http://127.0.0.1:9000/hook"},
        {"type": "rabbitmq", "rabbitmq_queue": "results"},
        {"type": "rabbitmq", "rabbitmq_queue": "q" * 255},
        {"type": "rabbitmq", "rabbitmq_queue": "é" * 127},  # 254 bytes
    ],
    ids=["docker-host", "https-query", "loopback", "queue", "queue-255-bytes", "queue-254-utf8-bytes"],
)
def test_valid_delivery_configs_are_accepted_and_stored(
    shared_client: httpx.Client, shared_api: SharedApi, delivery_config: dict
) -> None:
    custom_id = f"dc-{uuid.uuid4().hex}"
    resp = shared_client.post("/api/requests", json=valid_request(custom_id, delivery_config=delivery_config))
    assert resp.status_code == 202, resp.text
    row = fetch_row(shared_api.db_url, custom_id)
    assert row is not None
    assert row["delivery_config"] == delivery_config


def test_stream_false_is_accepted(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    body = {"model": "gpt-4o-mini", "input": "hi", "stream": False}
    resp = shared_client.post("/api/requests", json=valid_request("stream-false", body=body))
    assert resp.status_code == 202, resp.text
    row = fetch_row(shared_api.db_url, "stream-false")
    assert row is not None and json.loads(row["payload"])["body"] == body


def test_custom_id_at_the_max_length_is_accepted(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    custom_id = "c" * DEFAULT_CUSTOM_ID_MAX
    resp = shared_client.post("/api/requests", json=valid_request(custom_id))
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"custom_id": custom_id}
    row = fetch_row(shared_api.db_url, custom_id)
    assert row is not None and row["custom_id"] == custom_id and row["state"] == "pending"


def test_custom_id_of_max_length_in_4_byte_characters_is_accepted(shared_client: httpx.Client) -> None:
    rng = random.Random(7)
    custom_id = "".join(chr(rng.randrange(0x1F300, 0x1F600)) for _ in range(DEFAULT_CUSTOM_ID_MAX))
    resp = shared_client.post("/api/requests", json=valid_request(custom_id))
    assert resp.status_code == 202, resp.text
    assert shared_client.get(path_for(custom_id)).json()["custom_id"] == custom_id


def test_every_custom_id_length_the_settings_allow_can_be_stored(tmp_path: Path, db_url: str) -> None:
    """The configurable maximum must never let through a custom_id the database cannot index."""
    field = Settings.model_fields["custom_id_max_length"]
    upper = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    rng = random.Random(11)  # random characters: Postgres cannot compress them below its index row limit
    custom_id = "".join(chr(rng.randrange(0x1F300, 0x1F600)) for _ in range(upper))
    with serve(tmp_path, db_url, custom_id_max_length=upper) as c:
        resp = c.post("/api/requests", json=valid_request(custom_id))
    assert resp.status_code == 202, resp.text
    row = fetch_row(db_url, custom_id)
    assert row is not None and row["custom_id"] == custom_id


def test_one_megabyte_input_is_accepted(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    text = "lorem ipsum " * (1_000_000 // 12 + 1)
    assert len(text) >= 1_000_000
    req = valid_request("big-1mb", body={"model": "gpt-4o-mini", "input": text})
    resp = shared_client.post("/api/requests", json=req)
    assert resp.status_code == 202, resp.text[:500]
    row = fetch_row(shared_api.db_url, "big-1mb")
    assert row is not None
    assert row["payload_bytes"] > 1_000_000
    assert json.loads(row["payload"])["body"]["input"] == text


# ---------------------------------------------------------------------------------------------------
# Unicode


UNICODE_TEXT = (
    "emoji 😀👍🏽🇩🇰 · CJK 中文字符 日本語 한국어 · RTL שלום עולם مرحبا · combining é"
    " · controls \x01\x07\x1b\x7f\x85"
)


def test_unicode_round_trips_byte_exactly(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    custom_id = "uni-😀-中文-שלום-مرحبا-\x01\x1b\x7f-end"
    delivery = {"type": "rabbitmq", "rabbitmq_queue": "队列-😀-תור"}
    body = {
        "model": "gpt-4o-mini",
        "input": UNICODE_TEXT,
        "metadata": {"ключ": "значение", "😀": ["\u200f", "\u202e", "\t\n\r"]},
    }
    req = valid_request(custom_id, body=body, delivery_config=delivery)
    resp = shared_client.post("/api/requests", content=json.dumps(req, ensure_ascii=False).encode())
    assert resp.status_code == 202, resp.text
    assert resp.json()["custom_id"].encode() == custom_id.encode()

    got = shared_client.get(path_for(custom_id))
    assert got.status_code == 200, got.text
    data = got.json()
    assert data["custom_id"].encode() == custom_id.encode()
    assert data["delivery_config"] == delivery
    assert data["delivery_config"]["rabbitmq_queue"].encode() == delivery["rabbitmq_queue"].encode()

    row = fetch_row(shared_api.db_url, custom_id)
    assert row is not None
    assert row["custom_id"] == custom_id
    stored = json.loads(row["payload"])
    assert stored["body"] == body
    assert stored["body"]["input"].encode() == UNICODE_TEXT.encode()
    # Stored as UTF-8 text, not as \\u escapes.
    assert "😀" in row["payload"]
    assert "中文字符" in row["payload"]
    assert row["payload_bytes"] == len(row["payload"].encode())

    # The list endpoint finds it by a non-ASCII substring, too.
    listed = shared_client.get("/api/requests", params={"q": "中文-שלום"})
    assert [r["custom_id"] for r in listed.json()["data"]] == [custom_id]


def test_unicode_escapes_in_json_are_decoded(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    raw = (
        b'{"custom_id":"esc-\\u00e9\\ud83d\\ude00","url":"/v1/responses","method":"POST",'
        b'"body":{"model":"gpt-4o-mini","input":"\\u4e2d\\u6587"},'
        b'"delivery_config":{"type":"webhook","webhook_url":"https://e.example.com/h"}}'
    )
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"custom_id": "esc-é😀"}
    row = fetch_row(shared_api.db_url, "esc-é😀")
    assert row is not None
    assert json.loads(row["payload"])["body"]["input"] == "中文"


@pytest.mark.parametrize(
    "req",
    [
        valid_request("nul-\u0000-id"),
        valid_request("nul-model", body={"model": "gpt-4o-mini\u0000", "input": "hi"}),
        valid_request("nul-queue", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "q\u0000"}),
        valid_request(
            "nul-hook", delivery_config={"type": "webhook", "webhook_url": "https://e.example.com/\u0000"}
        ),
    ],
    ids=["custom_id", "model", "rabbitmq_queue", "webhook_url"],
)
def test_nul_characters_are_a_client_error_not_a_500(
    shared_client: httpx.Client, shared_api: SharedApi, req: dict
) -> None:
    """Postgres text/jsonb cannot hold U+0000; the API must say so with a 422, not crash."""
    resp = shared_client.post("/api/requests", json=req)
    error_items(resp, 422)
    if "\x00" not in req["custom_id"]:
        assert fetch_row(shared_api.db_url, req["custom_id"]) is None


@pytest.mark.parametrize(
    ("custom_id", "raw"),
    [
        (
            None,
            b'{"custom_id":"sur-\\ud800","url":"/v1/responses","method":"POST","body":{"model":"m"},'
            b'"delivery_config":{"type":"webhook","webhook_url":"https://e.example.com/h"}}',
        ),
        (
            "sur-body",
            b'{"custom_id":"sur-body","url":"/v1/responses","method":"POST",'
            b'"body":{"model":"m","input":"\\udfff"},'
            b'"delivery_config":{"type":"webhook","webhook_url":"https://e.example.com/h"}}',
        ),
    ],
    ids=["custom_id", "body"],
)
def test_lone_surrogate_escapes_are_a_client_error_not_a_500(
    shared_client: httpx.Client, shared_api: SharedApi, custom_id: str | None, raw: bytes
) -> None:
    """JSON allows "\\ud800" but it is not encodable text; the API must answer 422, not crash."""
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    error_items(resp, 422)
    if custom_id is not None:
        assert fetch_row(shared_api.db_url, custom_id) is None


def _raw_request(custom_id: bytes, body: bytes = b'{"model":"gpt-4o-mini","input":"hi"}') -> bytes:
    return (
        b'{"custom_id":"%b","url":"/v1/responses","method":"POST","body":%b,'
        b'"delivery_config":{"type":"webhook","webhook_url":"https://e.example.com/h"}}' % (custom_id, body)
    )


def _deep_body(depth: int, pretty: bool) -> bytes:
    """A body whose "deep" field nests ``depth`` arrays; pretty-printed bodies hold line breaks."""
    sep = b"\n  " if pretty else b""
    return b'{"model":"gpt-4o-mini",%b"deep":%b}' % (sep, (b"[" + sep) * depth + (b"]" + sep) * depth)


@pytest.mark.parametrize(
    ("custom_id", "raw"),
    [
        (None, _raw_request(b"utf8-\xff")),
        (None, _raw_request(b"utf8-\xc3")),
        ("utf8-body", _raw_request(b"utf8-body", b'{"model":"gpt-4o-mini","input":"\xff\xfe"}')),
        ("utf8-unknown", _raw_request(b"utf8-unknown", b'{"model":"gpt-4o-mini","x_\xff":1}')),
    ],
    ids=["custom_id", "custom_id-truncated", "body-input", "body-unknown-key"],
)
def test_invalid_utf8_inside_a_string_answers_422_invalid_json(
    shared_client: httpx.Client, shared_api: SharedApi, custom_id: str | None, raw: bytes
) -> None:
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    errors = assert_error(resp, 422, "invalid_json", "/")
    assert "UTF-8" in errors[0]["detail"]
    if custom_id is not None:
        assert fetch_row(shared_api.db_url, custom_id) is None


@pytest.mark.parametrize(
    ("depth", "pretty"),
    [(400, True), (400, False), (1000, True), (5000, False), (5000, True)],
    ids=["400-pretty", "400-compact", "1000-pretty", "5000-compact", "5000-pretty"],
)
def test_deeply_nested_body_answers_422_not_500(
    shared_client: httpx.Client, shared_api: SharedApi, depth: int, pretty: bool
) -> None:
    custom_id = f"deep-{depth}-{pretty}"
    raw = _raw_request(custom_id.encode(), _deep_body(depth, pretty))
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    errors = error_items(resp, 422)
    assert len(errors) == 1
    detail = errors[0]["detail"]
    assert "nested too deeply" in detail or "depth exceeded" in detail, detail
    assert fetch_row(shared_api.db_url, custom_id) is None


def test_moderately_nested_pretty_body_is_accepted(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    raw = _raw_request(b"deep-ok", _deep_body(60, pretty=True))
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    row = fetch_row(shared_api.db_url, "deep-ok")
    assert row is not None and "\n" not in row["payload"]


# ---------------------------------------------------------------------------------------------------
# Duplicates


def test_duplicate_custom_id_answers_409_and_keeps_the_first(client: httpx.Client, db_url: str) -> None:
    first = valid_request("dup-1")
    assert client.post("/api/requests", json=first).status_code == 202
    second = valid_request("dup-1", body={"model": "gpt-4.1", "input": "other"})
    resp = client.post("/api/requests", json=second)
    errors = assert_error(resp, 409, "duplicate_custom_id", "/custom_id")
    assert errors[0]["title"] == "Custom ID Already Exists"
    assert errors[0]["detail"] == "A request with this custom_id already exists in the batch"
    row = fetch_row(db_url, "dup-1")
    assert row is not None
    assert row["model"] == "gpt-4o-mini"
    assert count_rows(db_url) == 1


# ---------------------------------------------------------------------------------------------------
# Validation failures: 422 with the error envelope pointing at the offending field, nothing stored


def _bad(name: str, **top: Any) -> dict[str, Any]:
    return valid_request(f"bad-{name}", **top)


def _bad_body(name: str, **fields: Any) -> dict[str, Any]:
    return _bad(name, body={"model": "gpt-4o-mini", "input": "hi", **fields})


def _bad_delivery(name: str, **cfg: Any) -> dict[str, Any]:
    return _bad(name, delivery_config=cfg)


WEBHOOK_POINTER = "/delivery_config/webhook_url"
QUEUE_POINTER = "/delivery_config/rabbitmq_queue"
BAD_WEBHOOK_URLS = {
    "ftp": "ftp://files.example.com/hook",
    "no-host": "http://",
    "no-host-path": "https:///hook",
    "no-scheme": "hooks.example.com/path",
    "javascript": "javascript:alert(1)",
    "port-out-of-range": "http://hooks.example.com:99999/hook",
    "port-zero": "http://hooks.example.com:0/hook",
    "port-not-a-number": "http://hooks.example.com:80a/hook",
    "not-string": 8080,
    "empty": "",
    "null": None,
}

INVALID_CASES: list[tuple[str, dict[str, Any], str]] = [
    *[(f"missing-{f}", without(_bad(f"missing-{f}"), f), f"/{f}") for f in valid_request()],
    ("extra-top-level", _bad("extra-top-level", priority=1), "/priority"),
    ("extra-delivery-alias", _bad("extra-delivery-alias", delivery={"type": "webhook"}), "/delivery"),
    ("url-unsupported", _bad("url-unsupported", url="/v1/batches"), "/url"),
    ("url-no-v1", _bad("url-no-v1", url="/responses"), "/url"),
    ("url-absolute", _bad("url-absolute", url="https://api.openai.com/v1/responses"), "/url"),
    ("url-not-string", _bad("url-not-string", url=42), "/url"),
    ("url-null", _bad("url-null", url=None), "/url"),
    ("url-list", _bad("url-list", url=["/v1/responses"]), "/url"),
    ("url-object", _bad("url-object", url={"path": "/v1/responses"}), "/url"),
    ("method-get", _bad("method-get", method="GET"), "/method"),
    ("method-lowercase", _bad("method-lowercase", method="post"), "/method"),
    ("method-not-string", _bad("method-not-string", method=1), "/method"),
    ("body-string", _bad("body-string", body="hello"), "/body"),
    ("body-array", _bad("body-array", body=[{"model": "gpt-4o-mini"}]), "/body"),
    ("body-null", _bad("body-null", body=None), "/body"),
    ("body-without-model", _bad("body-without-model", body={"input": "hi"}), "/body/model"),
    ("model-number", _bad_body("model-number", model=4), "/body/model"),
    ("model-null", _bad_body("model-null", model=None), "/body/model"),
    ("model-empty", _bad_body("model-empty", model=""), "/body/model"),
    ("model-object", _bad_body("model-object", model={"name": "gpt-4o"}), "/body/model"),
    # The model is an index key; an index row holds at most 2,704 bytes (this used to be a 500).
    ("model-257-bytes", _bad_body("model-257-bytes", model="m" * 257), "/body/model"),
    ("model-3000-bytes", _bad_body("model-3000-bytes", model="模" * 1000), "/body/model"),
    ("stream-true", _bad_body("stream-true", stream=True), "/body/stream"),
    ("custom_id-empty", valid_request(""), "/custom_id"),
    ("custom_id-blank", valid_request("   "), "/custom_id"),
    ("custom_id-leading-space", valid_request(" bad-leading"), "/custom_id"),
    ("custom_id-trailing-space", valid_request("bad-trailing "), "/custom_id"),
    ("custom_id-trailing-newline", valid_request("bad-newline\n"), "/custom_id"),
    ("custom_id-leading-tab", valid_request("\tbad-tab"), "/custom_id"),
    ("custom_id-number", valid_request(123), "/custom_id"),  # type: ignore[arg-type]
    ("custom_id-null", valid_request(None), "/custom_id"),  # type: ignore[arg-type]
    ("delivery-not-object", _bad("delivery-not-object", delivery_config="webhook"), "/delivery_config"),
    (
        "delivery-type-unknown",
        _bad_delivery("delivery-type-unknown", type="email", to="a@b.c"),
        "/delivery_config/type",
    ),
    (
        "delivery-type-missing",
        _bad_delivery("delivery-type-missing", webhook_url="https://e.com"),
        "/delivery_config/type",
    ),
    *[
        (
            f"webhook-{name}",
            _bad_delivery(f"webhook-{name}", type="webhook", webhook_url=url),
            WEBHOOK_POINTER,
        )
        for name, url in BAD_WEBHOOK_URLS.items()
    ],
    ("webhook-missing-url", _bad_delivery("webhook-missing-url", type="webhook"), WEBHOOK_POINTER),
    (
        "webhook-extra-field",
        _bad_delivery("webhook-extra-field", type="webhook", webhook_url="https://e.com/h", secret="x"),
        "/delivery_config/secret",
    ),
    ("queue-empty", _bad_delivery("queue-empty", type="rabbitmq", rabbitmq_queue=""), QUEUE_POINTER),
    ("queue-blank", _bad_delivery("queue-blank", type="rabbitmq", rabbitmq_queue="  "), QUEUE_POINTER),
    ("queue-missing", _bad_delivery("queue-missing", type="rabbitmq"), QUEUE_POINTER),
    ("queue-not-string", _bad_delivery("queue-not-string", type="rabbitmq", rabbitmq_queue=5), QUEUE_POINTER),
    (
        "queue-256-bytes",
        _bad_delivery("queue-256-bytes", type="rabbitmq", rabbitmq_queue="q" * 256),
        QUEUE_POINTER,
    ),
    (
        "queue-256-utf8-bytes",
        _bad_delivery("queue-256-utf8-bytes", type="rabbitmq", rabbitmq_queue="é" * 128),
        QUEUE_POINTER,
    ),
    (
        "queue-with-exchange",
        _bad_delivery("queue-with-exchange", type="rabbitmq", rabbitmq_queue="q", rabbitmq_exchange="ex"),
        "/delivery_config/rabbitmq_exchange",
    ),
    (
        "queue-with-routing-key",
        _bad_delivery(
            "queue-with-routing-key", type="rabbitmq", rabbitmq_queue="q", rabbitmq_routing_key="rk"
        ),
        "/delivery_config/rabbitmq_routing_key",
    ),
    (
        "exchange-without-queue",
        _bad_delivery(
            "exchange-without-queue", type="rabbitmq", rabbitmq_exchange="ex", rabbitmq_routing_key="rk"
        ),
        "/delivery_config/rabbitmq_exchange",
    ),
    (
        "queue-extra-field",
        _bad_delivery("queue-extra-field", type="rabbitmq", rabbitmq_queue="q", durable=True),
        "/delivery_config/durable",
    ),
]


@pytest.mark.parametrize(
    ("req", "pointer"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES]
)
def test_invalid_request_answers_422_at_the_field(
    shared_client: httpx.Client, shared_api: SharedApi, req: dict, pointer: str
) -> None:
    resp = shared_client.post("/api/requests", json=req)
    assert_error(resp, 422, "validation_error", pointer)
    custom_id = req.get("custom_id")
    if isinstance(custom_id, str):
        assert fetch_row(shared_api.db_url, custom_id) is None


def test_missing_fields_are_all_reported_at_once(shared_client: httpx.Client) -> None:
    resp = shared_client.post("/api/requests", json={"custom_id": "only-id", "extra": 1})
    errors = error_items(resp, 422)
    pointers = {e["source"]["pointer"] for e in errors}
    assert pointers == {"/url", "/method", "/body", "/delivery_config", "/extra"}
    assert {e["detail"] for e in errors} >= {"Missing field: url", "Unexpected field: extra"}


def test_custom_id_over_the_max_length_is_rejected(shared_client: httpx.Client) -> None:
    custom_id = "c" * (DEFAULT_CUSTOM_ID_MAX + 1)
    resp = shared_client.post("/api/requests", json=valid_request(custom_id))
    errors = assert_error(resp, 422, "validation_error", "/custom_id")
    assert str(DEFAULT_CUSTOM_ID_MAX) in errors[0]["detail"]


def test_custom_id_max_length_follows_the_settings(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, custom_id_max_length=10) as c:
        assert c.post("/api/requests", json=valid_request("a" * 10)).status_code == 202
        assert_error(
            c.post("/api/requests", json=valid_request("a" * 11)), 422, "validation_error", "/custom_id"
        )


@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "pretty"])
@pytest.mark.parametrize("number", ["1e999", "-1E+400", "9" * 5000], ids=["exp", "neg-exp", "5000-digits"])
def test_numbers_no_double_can_hold_get_the_same_422_however_the_body_is_laid_out(
    shared_client: httpx.Client, shared_api: SharedApi, number: str, indent: int | None
) -> None:
    custom_id = f"huge-number-{indent}-{number[:8]}"
    text = json.dumps(_bad_body(custom_id, x="NUMBER"), indent=indent).replace('"NUMBER"', number)
    resp = shared_client.post("/api/requests", content=text, headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_json", "/")
    assert fetch_row(shared_api.db_url, f"bad-{custom_id}") is None


def test_model_of_256_bytes_is_accepted(shared_client: httpx.Client, shared_api: SharedApi) -> None:
    req = valid_request("model-256", body={"model": "é" * 128, "input": "hi"})
    assert shared_client.post("/api/requests", json=req).status_code == 202
    row = fetch_row(shared_api.db_url, "model-256")
    assert row is not None and row["model"] == "é" * 128


@pytest.mark.parametrize("char", ["x", "é"], ids=["ascii", "two-byte"])
def test_webhook_url_of_2048_bytes_is_accepted_and_2049_refused(
    shared_client: httpx.Client, shared_api: SharedApi, char: str
) -> None:
    def url_of(size: int) -> str:
        url = "https://hooks.example.com/" + char * ((size - 26) // len(char.encode()))
        url += "x" * (size - len(url.encode()))
        assert len(url.encode()) == size
        return url

    ok = valid_request(f"hook-2048-{char}", delivery_config={"type": "webhook", "webhook_url": url_of(2048)})
    assert shared_client.post("/api/requests", json=ok).status_code == 202
    row = fetch_row(shared_api.db_url, f"hook-2048-{char}")
    assert row is not None and row["delivery_config"]["webhook_url"] == url_of(2048)

    over = valid_request(
        f"hook-2049-{char}", delivery_config={"type": "webhook", "webhook_url": url_of(2049)}
    )
    errors = assert_error(
        shared_client.post("/api/requests", json=over), 422, "validation_error", WEBHOOK_POINTER
    )
    assert "2048 bytes" in errors[0]["detail"]
    assert fetch_row(shared_api.db_url, f"hook-2049-{char}") is None


def test_webhook_urls_to_loopback_in_any_address_form_answer_422_when_blocking(
    tmp_path: Path, db_url: str
) -> None:
    hosts = [
        "127.1", "0177.0.0.1", "2130706433", "0x7f.1", "127.0.0.1.",
        "[64:ff9b:1::7f00:1]", "[2002:7f00:1::]", "[::127.0.0.1]",
    ]  # fmt: skip
    with serve(tmp_path, db_url, webhook_block_private_networks=True) as c:
        for i, host in enumerate(hosts):
            cfg = {"type": "webhook", "webhook_url": f"http://{host}:8080/hook"}
            resp = c.post("/api/requests", json=valid_request(f"ssrf-{i}", delivery_config=cfg))
            errors = assert_error(resp, 422, "webhook_url_not_allowed", WEBHOOK_POINTER)
            assert "127.0.0.1" in errors[0]["detail"], (host, errors)
        public = {"type": "webhook", "webhook_url": "https://hooks.example.com/h"}
        assert (
            c.post("/api/requests", json=valid_request("ssrf-ok", delivery_config=public)).status_code == 202
        )
    assert count_rows(db_url) == 1


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"custom_id": "x",}', b"not json", b"\xff\xfe\x00", b"{'custom_id': 'x'}", b"NaN-ish"],
    ids=["empty", "truncated", "trailing-comma", "text", "bad-utf8", "single-quotes", "garbage"],
)
def test_invalid_json_answers_422_invalid_json(shared_client: httpx.Client, raw: bytes) -> None:
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    errors = assert_error(resp, 422, "invalid_json", "/")
    assert errors[0]["title"] == "Invalid JSON"


@pytest.mark.parametrize(
    "raw",
    [json.dumps([valid_request("arr-1")]).encode(), b"[]", b"null", b"42", b'"a string"', b"true"],
    ids=["array-of-request", "empty-array", "null", "number", "string", "bool"],
)
def test_body_not_a_json_object_answers_422(shared_client: httpx.Client, raw: bytes) -> None:
    resp = shared_client.post("/api/requests", content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 422, "validation_error", "/")


# ---------------------------------------------------------------------------------------------------
# Token limit and size limits


def test_request_over_the_model_token_limit_answers_422_token_limit(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    huge = "word " * 80_000  # 400,000 ASCII characters: about 110,000 estimated tokens
    resp = shared_client.post(
        "/api/requests", json=valid_request("tok-1", body={"model": "gpt-4o", "input": huge})
    )
    errors = assert_error(resp, 422, "token_limit", "/body")
    assert "gpt-4o" in errors[0]["detail"]
    assert "90000" in errors[0]["detail"]
    assert fetch_row(shared_api.db_url, "tok-1") is None
    # The same input is fine for a model with a larger limit.
    ok = shared_client.post(
        "/api/requests", json=valid_request("tok-2", body={"model": "gpt-4o-mini", "input": huge})
    )
    assert ok.status_code == 202, ok.text[:300]


def _padded(custom_id: str, size: int) -> dict[str, Any]:
    return valid_request(custom_id, body={"model": "gpt-4o-mini", "input": "x" * size})


def test_body_over_intake_max_body_bytes_answers_413(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, intake_max_body_bytes=2048) as c:
        small = c.post("/api/requests", json=_padded("small", 1000))
        assert small.status_code == 202, small.text

        resp = c.post("/api/requests", json=_padded("big", 3000))
        errors = assert_error(resp, 413, "payload_too_large")
        assert "2048" in errors[0]["detail"]

        # Without a Content-Length (chunked), the limit is enforced while streaming.
        raw = json.dumps(_padded("big-chunked", 5000)).encode()

        def chunks() -> Any:
            for i in range(0, len(raw), 512):
                yield raw[i : i + 512]

        chunked = c.post("/api/requests", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "payload_too_large")
    assert fetch_row(db_url, "big") is None
    assert fetch_row(db_url, "big-chunked") is None
    assert fetch_row(db_url, "small") is not None


def test_request_line_over_batch_max_bytes_answers_413_request_too_large(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, batch_max_bytes=2048) as c:
        ok = c.post("/api/requests", json=_padded("fits", 1500))
        assert ok.status_code == 202, ok.text
        resp = c.post("/api/requests", json=_padded("too-big", 3000))
        errors = assert_error(resp, 413, "request_too_large", "/")
        assert errors[0]["title"] == "Request Too Large"
        assert "2048" in errors[0]["detail"]
    assert fetch_row(db_url, "too-big") is None
    row = fetch_row(db_url, "fits")
    assert row is not None
    assert row["payload_bytes"] + 1 <= 2048


# ---------------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_submissions_store_each_custom_id_exactly_once(api: Any, db_url: str) -> None:
    ids = [f"conc-{i:03d}" for i in range(200)]
    submissions = [cid for _ in range(5) for cid in ids]
    random.Random(3).shuffle(submissions)

    async def run() -> list[tuple[str, int, Any]]:
        sem = asyncio.Semaphore(50)
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits, verify=TLS_CONTEXT) as c:

            async def submit(cid: str) -> tuple[str, int, Any]:
                async with sem:
                    r = await c.post("/api/requests", json=valid_request(cid))
                    return cid, r.status_code, r.json()

            return await asyncio.gather(*(submit(cid) for cid in submissions))

    results = asyncio.run(run())
    statuses = Counter(status for _, status, _ in results)
    assert statuses == {202: 200, 409: 800}
    accepted = Counter(cid for cid, status, _ in results if status == 202)
    assert set(accepted) == set(ids)
    assert set(accepted.values()) == {1}
    for _, status, body in results:
        if status == 409:
            assert body["errors"][0]["code"] == "duplicate_custom_id"
        else:
            assert set(body) == {"custom_id"}

    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT custom_id, count(*) FROM batchman.requests GROUP BY custom_id").fetchall()
    assert len(rows) == 200
    assert {cid for cid, _ in rows} == set(ids)
    assert all(n == 1 for _, n in rows)


def test_rabbitmq_allowed_queues_refuses_other_queues_with_422(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, rabbitmq_allowed_queues="results., audit-") as c:
        ok = valid_request("rq-ok", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "results.a"})
        assert c.post("/api/requests", json=ok).status_code == 202
        bad = valid_request("rq-bad", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "billing"})
        errors = assert_error(c.post("/api/requests", json=bad), 422, "rabbitmq_queue_not_allowed")
        assert errors[0]["source"]["pointer"] == "/delivery_config/rabbitmq_queue"
    assert fetch_row(db_url, "rq-ok") is not None and fetch_row(db_url, "rq-bad") is None
