"""The C fast path must accept exactly what the full validator accepts, and store the same line."""

from __future__ import annotations

import json

import pytest

from batch_pipeline.intake.fast_decode import fast_validate
from batch_pipeline.intake.validation import (
    MAX_BODY_DEPTH,
    MAX_WEBHOOK_URL_BYTES,
    Limits,
    NewRequest,
    RequestTooLarge,
    validate_request,
)

LIMITS = Limits(custom_id_max_length=20, batch_max_bytes=4096)


def webhook_url_of(size: int, char: str = "x") -> str:
    """An http URL of exactly ``size`` bytes in UTF-8 (``char`` one or two bytes), padded with x."""
    prefix = "https://h.example/"
    count = (size - len(prefix)) // len(char.encode())
    url = prefix + char * count
    return url + "x" * (size - len(url.encode()))


BASE = {
    "custom_id": "c1",
    "url": "/v1/responses",
    "method": "POST",
    "body": {"model": "gpt-4o-mini", "input": "héllo 你好", "big": 123456789012345678901234567890},
    "delivery_config": {"type": "webhook", "webhook_url": "https://h.example/x?k=1"},
}

VARIANTS = [
    {},
    {"custom_id": ""},
    {"custom_id": " c1"},
    {"custom_id": "x" * 21},
    {"custom_id": 7},
    {"url": "/v1/nope"},
    {"url": "/v1/embeddings", "body": {"model": "e", "input": ["a", "b"]}},
    {"method": "GET"},
    {"body": []},
    {"body": {"input": "no model"}},
    {"body": {"model": " "}},
    {"body": {"model": "m", "stream": True}},
    {"body": {"model": "m", "stream": False}},
    {"body": {"model": "m", "input": "x" * 5000}},
    {"body": {"model": "m" * 256}},
    {"body": {"model": "m" * 257}},
    {"body": {"model": "é" * 129}},
    {"delivery_config": {"type": "webhook", "webhook_url": "ftp://h/x"}},
    {"delivery_config": {"type": "webhook", "webhook_url": "http://[::1"}},
    {"delivery_config": {"type": "webhook", "webhook_url": "http://h:99999/x"}},
    {"delivery_config": {"type": "webhook", "webhook_url": "http://h:0/x"}},
    {"delivery_config": {"type": "webhook", "webhook_url": "http://h:65535/x"}},
    {"delivery_config": {"type": "webhook"}},
    {"delivery_config": {"type": "webhook", "webhook_url": webhook_url_of(MAX_WEBHOOK_URL_BYTES)}},
    {"delivery_config": {"type": "webhook", "webhook_url": webhook_url_of(MAX_WEBHOOK_URL_BYTES + 1)}},
    {"delivery_config": {"type": "webhook", "webhook_url": webhook_url_of(MAX_WEBHOOK_URL_BYTES, "é")}},
    {"delivery_config": {"type": "webhook", "webhook_url": webhook_url_of(MAX_WEBHOOK_URL_BYTES + 1, "é")}},
    {"delivery_config": {"type": "webhook", "webhook_url": "http://h/x", "extra": 1}},
    {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "q"}},
    {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": " "}},
    {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "é" * 200}},
    {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "q", "rabbitmq_exchange": "x"}},
    {"delivery_config": {"type": "sqs"}},
    {"extra": True},
]


def slow(obj: dict) -> NewRequest | None:
    try:
        result = validate_request(obj, LIMITS)
    except RequestTooLarge:
        return None
    return result if isinstance(result, NewRequest) else None


@pytest.mark.parametrize("change", VARIANTS)
@pytest.mark.parametrize("indent", [None, 2])
def test_fast_and_full_paths_agree(change: dict, indent: int | None) -> None:
    obj = {**BASE, **change}
    raw = json.dumps(obj, indent=indent, ensure_ascii=False).encode()
    fast = fast_validate(raw, LIMITS)
    full = slow(json.loads(raw))
    if fast is None:
        # The fast path may decline anything; it must never accept what the full validator rejects.
        return
    assert full is not None, f"fast path accepted an invalid request: {change}"
    assert json.loads(fast.payload) == json.loads(full.payload)
    assert "\n" not in fast.payload
    assert (fast.custom_id, fast.url, fast.model, fast.delivery_config) == (
        full.custom_id,
        full.url,
        full.model,
        full.delivery_config,
    )
    assert fast.payload_bytes == len(fast.payload.encode())
    assert abs(fast.estimated_tokens - full.estimated_tokens) <= 2


def test_fast_path_takes_the_common_case_and_keeps_big_numbers() -> None:
    fast = fast_validate(json.dumps(BASE).encode(), LIMITS)
    assert fast is not None
    assert "123456789012345678901234567890" in fast.payload
    rabbitmq = {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "q"}}
    assert fast_validate(json.dumps({**BASE, **rabbitmq}).encode(), LIMITS) is not None
    assert fast_validate(json.dumps({**BASE, "body": {"model": "m" * 256}}).encode(), LIMITS) is not None


@pytest.mark.parametrize("number", [b"1e999", b"-1E+400", b"9" * 5000])
def test_numbers_no_double_can_hold_are_declined(number: bytes) -> None:
    # Declined here, so the full validator reports them, as it does for a pretty-printed body.
    assert fast_validate(_raw_with(body=b'{"model":"m","x":%b}' % number), LIMITS) is None


def test_model_names_longer_than_the_index_allows_are_refused() -> None:
    errors = validate_request({**BASE, "body": {"model": "m" * 257}}, LIMITS)
    assert isinstance(errors, list)
    assert [e["source"]["pointer"] for e in errors] == ["/body/model"]
    assert "256 bytes" in errors[0]["detail"]


def _raw_with(custom_id: bytes = b"c1", body: bytes = b'{"model":"m","input":"x"}') -> bytes:
    return (
        b'{"custom_id":"%b","url":"/v1/responses","method":"POST","body":%b,'
        b'"delivery_config":{"type":"webhook","webhook_url":"https://h.example/x"}}' % (custom_id, body)
    )


@pytest.mark.parametrize(
    "raw",
    [
        _raw_with(custom_id=b"\xff"),
        _raw_with(custom_id=b"ok\xc3"),
        _raw_with(body=b'{"model":"m","input":"\xff"}'),
        _raw_with(body=b'{"model":"m","x_unknown":{"k\xfe":1}}'),
    ],
    ids=["custom_id", "truncated-sequence", "body-input", "body-unknown-key"],
)
def test_invalid_utf8_is_declined_not_raised(raw: bytes) -> None:
    assert fast_validate(raw, LIMITS) is None


@pytest.mark.parametrize("depth", [MAX_BODY_DEPTH, 400, 1000, 5000])
@pytest.mark.parametrize("sep", [b"", b"\n"], ids=["compact", "pretty"])
def test_too_deep_bodies_are_declined_not_raised(depth: int, sep: bytes) -> None:
    # The body object is one level; "deep" adds ``depth`` more, one over the limit at least.
    deep = (b"[" + sep) * depth + (b"]" + sep) * depth
    raw = _raw_with(body=b'{"model":"m","deep":%b}' % deep)
    assert fast_validate(raw, Limits(batch_max_bytes=1_000_000)) is None


def test_nesting_up_to_the_limit_and_brackets_in_strings_keep_the_fast_path() -> None:
    limits = Limits(batch_max_bytes=1_000_000)
    depth = MAX_BODY_DEPTH - 1
    deep = b"[" * depth + b"]" * depth
    at_limit = fast_validate(_raw_with(body=b'{"model":"m","deep":%b}' % deep), limits)
    assert at_limit is not None
    assert at_limit.payload == slow_with(json.loads(at_limit.payload), limits).payload
    # Brackets inside strings are text, not nesting.
    text = json.dumps({"model": "m", "input": "[{" * 500 + '\\"[' * 100}).encode()
    assert fast_validate(_raw_with(body=text), limits) is not None
    many = json.dumps({"model": "m", "input": [{"role": "user", "content": "x"}] * 500}).encode()
    assert fast_validate(_raw_with(body=many), limits) is not None


def slow_with(line: dict, limits: Limits) -> NewRequest:
    obj = {**line, "delivery_config": {"type": "webhook", "webhook_url": "https://h.example/x"}}
    result = validate_request(obj, limits)
    assert isinstance(result, NewRequest)
    return result


@pytest.mark.parametrize("char", ["x", "é"])
def test_webhook_urls_over_2048_bytes_are_refused_on_both_paths(char: str) -> None:
    def with_url(size: int) -> dict:
        return {**BASE, "delivery_config": {"type": "webhook", "webhook_url": webhook_url_of(size, char)}}

    at_limit = with_url(MAX_WEBHOOK_URL_BYTES)
    assert len(at_limit["delivery_config"]["webhook_url"].encode()) == MAX_WEBHOOK_URL_BYTES
    assert fast_validate(json.dumps(at_limit, ensure_ascii=False).encode(), LIMITS) is not None
    assert slow(at_limit) is not None

    over = with_url(MAX_WEBHOOK_URL_BYTES + 1)
    assert fast_validate(json.dumps(over, ensure_ascii=False).encode(), LIMITS) is None
    errors = validate_request(over, LIMITS)
    assert isinstance(errors, list)
    assert [(e["code"], e["source"]["pointer"]) for e in errors] == [
        ("validation_error", "/delivery_config/webhook_url")
    ]
    assert "2048 bytes" in errors[0]["detail"]
    # Huge URLs are refused before any parsing, and a bulk item's pointer starts with its index.
    huge = {**BASE, "delivery_config": {"type": "webhook", "webhook_url": "https://h.example/" + "x" * 10**7}}
    assert fast_validate(json.dumps(huge).encode(), LIMITS) is None
    errors = validate_request(huge, LIMITS, "/3")
    assert isinstance(errors, list)
    assert [e["source"]["pointer"] for e in errors] == ["/3/delivery_config/webhook_url"]
