"""Validation of one request (unit): what passes through, what is rejected, what the line looks like."""

from __future__ import annotations

import json

import pytest

from batch_pipeline.intake.validation import (
    MAX_BODY_DEPTH,
    Limits,
    NewRequest,
    RequestTooLarge,
    validate_request,
)

LIMITS = Limits()


def valid(**over: object) -> dict:
    base = {
        "custom_id": "c1",
        "url": "/v1/chat/completions",
        "method": "POST",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "tool", "content": [{"type": "text", "text": "x"}]}],
        },
        "delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "results"},
    }
    base.update(over)
    return base


def test_line_is_the_openai_input_without_delivery_config() -> None:
    r = validate_request(valid(body={"model": "m", "temperature": 0, "x_custom": {"a": [1]}}), LIMITS)
    assert isinstance(r, NewRequest)
    line = json.loads(r.payload)
    assert line == {
        "custom_id": "c1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "temperature": 0, "x_custom": {"a": [1]}},
    }
    assert r.payload_bytes == len(r.payload.encode())
    assert r.delivery_config == {"type": "rabbitmq", "rabbitmq_queue": "results"}


def test_unicode_is_kept_verbatim() -> None:
    r = validate_request(valid(custom_id="ид-😀", body={"model": "m", "input": "مرحبا 你好"}), LIMITS)
    assert isinstance(r, NewRequest)
    assert "你好" in r.payload and r.payload_bytes > len(r.payload)


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"custom_id": 5}, "/custom_id"),
        ({"url": "/v1/unknown"}, "/url"),
        ({"method": "GET"}, "/method"),
        ({"body": []}, "/body"),
        ({"body": {"model": ""}}, "/body/model"),
        ({"body": {"model": "m", "stream": True}}, "/body/stream"),
        (
            {"delivery_config": {"type": "webhook", "webhook_url": "ftp://x/y"}},
            "/delivery_config/webhook_url",
        ),
        (
            {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "q" * 256}},
            "/delivery_config/rabbitmq_queue",
        ),
        (
            {"delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "q", "rabbitmq_exchange": "x"}},
            "/delivery_config/rabbitmq_exchange",
        ),
        ({"delivery_config": {"type": "sqs"}}, "/delivery_config/type"),
        ({"extra": 1}, "/extra"),
    ],
)
def test_rejections_point_at_the_field(change: dict, pointer: str) -> None:
    errors = validate_request(valid(**change), LIMITS, pointer="/3")
    assert isinstance(errors, list)
    assert "/3" + pointer in [e["source"]["pointer"] for e in errors]
    assert all(e["code"] and e["title"] and e["detail"] for e in errors)


def test_missing_fields_are_all_reported() -> None:
    errors = validate_request({}, LIMITS)
    assert {e["source"]["pointer"] for e in errors} == {
        "/custom_id",
        "/url",
        "/method",
        "/body",
        "/delivery_config",
    }


def test_embeddings_input_cap() -> None:
    body = {"model": "text-embedding-3-small", "input": ["a"] * 50_001}
    errors = validate_request(valid(url="/v1/embeddings", body=body), LIMITS)
    assert isinstance(errors, list) and errors[0]["source"]["pointer"] == "/body/input"


def test_request_larger_than_a_batch_is_too_large() -> None:
    with pytest.raises(RequestTooLarge):
        validate_request(valid(body={"model": "m", "input": "x" * 5000}), Limits(batch_max_bytes=2048))


def test_url_policy_hook_rejects() -> None:
    cfg = {"type": "webhook", "webhook_url": "http://10.0.0.1/h"}
    errors = validate_request(valid(delivery_config=cfg), LIMITS, url_policy=lambda url: "private address")
    assert errors[0]["code"] == "webhook_url_not_allowed"


def _nested(depth: int, leaf: object = None) -> object:
    """``depth`` levels of arrays around ``leaf``, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [400, 1000, 5000])
def test_deeply_nested_body_is_a_client_error_not_a_crash(depth: int) -> None:
    errors = validate_request(valid(body={"model": "m", "deep": _nested(depth)}), LIMITS, pointer="/2")
    assert isinstance(errors, list)
    assert [e["source"]["pointer"] for e in errors] == ["/2/body"]
    assert "nested too deeply" in errors[0]["detail"]


def test_body_at_the_nesting_limit_is_accepted_and_nul_is_still_found_deep_down() -> None:
    # The body object is one level; "deep" adds the rest.
    at_limit = {"model": "m", "deep": _nested(MAX_BODY_DEPTH - 1)}
    assert isinstance(validate_request(valid(body=at_limit), LIMITS), NewRequest)
    over = {"model": "m", "deep": _nested(MAX_BODY_DEPTH)}
    assert isinstance(validate_request(valid(body=over), LIMITS), list)
    nul = {"model": "m", "deep": _nested(MAX_BODY_DEPTH - 2, {"k\u0000": "v"})}
    errors = validate_request(valid(body=nul), LIMITS)
    assert isinstance(errors, list) and "NUL" in errors[0]["detail"]


def test_deep_nesting_is_reported_with_the_other_errors() -> None:
    errors = validate_request(valid(method="GET", body={"model": "m", "deep": _nested(400)}), LIMITS)
    assert isinstance(errors, list)
    assert {e["source"]["pointer"] for e in errors} == {"/method", "/body"}


def test_rabbitmq_queue_must_start_with_an_allowed_prefix_when_some_are_set() -> None:
    import json as _json

    from batch_pipeline.intake.fast_decode import fast_validate

    limits = Limits(queue_prefixes=("results.", "audit-"))
    for queue, allowed in [("results.team-a", True), ("audit-1", True), ("other", False), ("result", False)]:
        request = valid(delivery_config={"type": "rabbitmq", "rabbitmq_queue": queue})
        checked = validate_request(request, limits)
        fast = fast_validate(_json.dumps(request).encode(), limits)
        if allowed:
            assert checked.delivery_config["rabbitmq_queue"] == queue and fast is not None
        else:
            assert [(e["code"], e["source"]["pointer"]) for e in checked] == [
                ("rabbitmq_queue_not_allowed", "/delivery_config/rabbitmq_queue")
            ]
            assert fast is None  # the fast path leaves the verdict to the full one
    # No prefixes: any queue.
    assert not isinstance(
        validate_request(valid(delivery_config={"type": "rabbitmq", "rabbitmq_queue": "x"}), LIMITS), list
    )
