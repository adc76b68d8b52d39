"""The intake fast path: decode and check one raw request in C (msgspec), without building Python dicts.

Only well-formed requests take this path. Anything it does not accept, or is not sure about, returns
None and goes through ``validation.validate_request``, which reports every error in the Elixir service's
envelope. A test checks that both paths agree on what they accept and on the line they store.

The request ``body`` is kept as the client's raw JSON bytes, so unknown fields (and numbers as
written) reach OpenAI untouched; a body with line breaks in its whitespace takes the slow path, which
re-serialises it compactly (a JSONL line must not contain one). A number no double can hold (1e999)
is refused on both paths.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from batch_pipeline.intake.endpoints import ENDPOINTS
from batch_pipeline.intake.tokens import estimate_tokens
from batch_pipeline.intake.validation import (
    CUSTOM_ID_MAX_BYTES,
    MAX_BODY_DEPTH,
    MAX_WEBHOOK_URL_BYTES,
    MODEL_MAX_BYTES,
    QUEUE_NAME_MAX_BYTES,
    Limits,
    NewRequest,
    UrlPolicy,
    is_http_url,
)


class _Webhook(msgspec.Struct, gc=False, tag_field="type", tag="webhook", forbid_unknown_fields=True):
    webhook_url: str
    headers: msgspec.Raw | None = None  # credentials for the receiver: the full validator checks them


class _RabbitMQ(msgspec.Struct, gc=False, tag_field="type", tag="rabbitmq", forbid_unknown_fields=True):
    rabbitmq_queue: str


class _Request(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    custom_id: str
    url: str
    method: Literal["POST"]
    body: msgspec.Raw
    delivery_config: _Webhook | _RabbitMQ


_decode_request = msgspec.json.Decoder(_Request).decode
# Untyped, so that every value is parsed: a typed decoder skips unknown fields without checking their
# numbers, and a number no double can hold (1e999) must fail here as it fails the full validator.
_decode_body = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Valid JSON nests its brackets properly, so for depth an object's braces may count as brackets.
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _nests_at_most(raw: bytes, max_depth: int) -> bool:
    """Whether the valid JSON ``raw`` nests at most ``max_depth`` levels of arrays and objects.

    False may also mean "not cheaply known": the caller then leaves the request to the full validator.
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:  # the common case: few brackets at all
        return True
    brackets = _JSON_STRING.sub(b"", raw).translate(_AS_BRACKETS, _NOT_A_BRACKET)
    budget = 8 * len(brackets)  # bytes to scan; past it, the (linear) full validator decides
    for _ in range(max_depth):  # each pass removes the innermost level
        if not brackets:
            return True
        budget -= len(brackets)
        if budget < 0:
            return False
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def fast_validate(raw: bytes, limits: Limits, url_policy: UrlPolicy | None = None) -> NewRequest | None:
    """A ``NewRequest`` for a valid raw request, or None to let the full validator decide."""
    try:
        req = _decode_request(raw)
        body_raw = bytes(req.body)
        body = _decode_body(body_raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        # Invalid UTF-8 inside a string, nesting deeper than msgspec recurses, a number out of range:
        # the full path reports it.
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    if not isinstance(model, str):
        return None
    custom_id, url, cfg = req.custom_id, req.url, req.delivery_config
    endpoint = ENDPOINTS.get(url)
    if (
        endpoint is None
        or endpoint.max_inputs is not None  # input counting needs the decoded body
        or not custom_id
        or custom_id != custom_id.strip()
        or len(custom_id) > limits.custom_id_max_length
        or len(custom_id.encode()) > CUSTOM_ID_MAX_BYTES
        or not model.strip()
        or (len(model) > MODEL_MAX_BYTES // 4 and len(model.encode()) > MODEL_MAX_BYTES)
        or body.get("stream") is True
        # NUL (escaped in JSON) is refused by the full validator. Many requests hold no escape at all,
        # and looking for a backslash (memchr) costs a third of looking for the escape.
        or (b"\\" in raw and b"\\u0000" in raw)
        or b"\n" in body_raw
        or b"\r" in body_raw
        or not _nests_at_most(body_raw, MAX_BODY_DEPTH)
    ):
        return None
    if isinstance(cfg, _Webhook):
        webhook_url = cfg.webhook_url
        if (
            cfg.headers is not None
            or (
                len(webhook_url) > MAX_WEBHOOK_URL_BYTES // 4
                and len(webhook_url.encode()) > MAX_WEBHOOK_URL_BYTES
            )
            or not is_http_url(webhook_url)
            or (url_policy and url_policy(webhook_url))
        ):
            return None
        delivery = {"type": "webhook", "webhook_url": cfg.webhook_url}
    else:
        queue = cfg.rabbitmq_queue
        if not queue.strip() or len(queue.encode()) > QUEUE_NAME_MAX_BYTES:
            return None
        if limits.queue_prefixes and not queue.startswith(limits.queue_prefixes):
            return None  # the full path reports it
        delivery = {"type": "rabbitmq", "rabbitmq_queue": queue}
    line = b'{"custom_id":%b,"method":"POST","url":"%b","body":%b}' % (
        _encode(custom_id),
        url.encode(),
        body_raw.strip(),
    )
    if len(line) + 1 > limits.batch_max_bytes:
        return None  # the full validator raises RequestTooLarge with the message
    try:
        payload = line.decode()
    except UnicodeDecodeError:  # msgspec does not check the UTF-8 of what it skips in the raw body
        return None
    return NewRequest(
        custom_id=custom_id,
        url=url,
        model=model,
        payload=payload,
        payload_bytes=len(line),
        estimated_tokens=estimate_tokens(payload, len(line), None, limits.token_safety_factor),
        delivery_config=delivery,
    )
