"""Receiver credentials: which headers a delivery_config may set, and how secrets are masked."""

from __future__ import annotations

import pytest

from batch_pipeline.redaction import (
    MAX_HEADER_VALUE_BYTES,
    header_errors,
    masked_delivery_config,
    masked_url,
    scrubbed,
    secret_values,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/x?token=s3cret&page=2", "https://h.example/x?token=***&page=2"),
        ("https://h.example/x?api_key=abc&sig=def", "https://h.example/x?api_key=***&sig=***"),
        ("https://h.example/x?X-Amz-Signature=abc", "https://h.example/x?X-Amz-Signature=***"),
        ("https://user:pw12@h.example/x", "https://user:***@h.example/x"),
        ("https://h.example/x?page=2&sort=asc", "https://h.example/x?page=2&sort=asc"),  # untouched
        ("https://h.example/x", "https://h.example/x"),
        ("http://[::1/x?token=a", "***"),  # cannot be taken apart: nothing shown
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_masked_delivery_config_masks_header_values_and_keeps_the_stored_one() -> None:
    cfg = {
        "type": "webhook",
        "webhook_url": "https://h.example/?key=k1k1",
        "headers": {"Authorization": "B x"},
    }
    assert masked_delivery_config(cfg) == {
        "type": "webhook",
        "webhook_url": "https://h.example/?key=***",
        "headers": {"Authorization": "***"},
    }
    assert cfg["headers"] == {"Authorization": "B x"}  # a copy was masked, not the caller's object
    queue = {"type": "rabbitmq", "rabbitmq_queue": "results"}
    assert masked_delivery_config(queue) == queue


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "X-AUTH-TOKEN", "Api-Key"])
def test_allowlisted_headers_pass(name: str) -> None:
    assert header_errors({name: "Bearer abc"}) == []


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"Content-Type": "text/plain"}, "not allowed"),
        ({"idempotency-key": "x"}, "not allowed"),
        ({"webhook-signature": "v1,x"}, "not allowed"),
        ({"Authorization": "a", "authorization": "b"}, "twice"),
        ({"Authorization": ""}, "non-empty"),
        ({"Authorization": 5}, "non-empty"),
        ({"Authorization": "a\r\nX-Evil: 1"}, "printable ASCII"),
        ({"Authorization": "caf\u00e9"}, "printable ASCII"),
        ({"Authorization": "x" * (MAX_HEADER_VALUE_BYTES + 1)}, "at most 1024"),
        (["Authorization"], "must be an object"),
    ],
)
def test_bad_headers_are_refused(headers: object, fragment: str) -> None:
    problems = header_errors(headers)
    assert problems and fragment in problems[0][0]


def test_a_value_of_exactly_the_limit_passes() -> None:
    assert header_errors({"X-Api-Key": "x" * MAX_HEADER_VALUE_BYTES}) == []


def test_scrubbed_removes_every_secret_from_an_error_text() -> None:
    cfg = {
        "type": "webhook",
        "webhook_url": "https://u:pass1@h.example/x?token=tok%2Fen&page=22222",
        "headers": {"X-Api-Key": "key-value"},
    }
    secrets = secret_values(cfg)
    text = "InvalidURL: https://u:pass1@h.example/x?token=tok%2Fen (also tok/en) key-value page=22222"
    assert (
        scrubbed(text, secrets) == "InvalidURL: https://u:***@h.example/x?token=*** (also ***) *** page=22222"
    )
