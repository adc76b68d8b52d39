"""Validation of one submitted request, shared by HTTP intake, bulk intake and the RabbitMQ consumer.

Input is the decoded JSON of a ``POST /api/requests`` body. Output is either a ``NewRequest`` ready to
store, or a list of errors in the Elixir service's envelope shape
(``{code, title, detail, source: {pointer}}``).
Unknown fields inside ``body`` pass through to OpenAI untouched; unknown top-level fields are rejected,
as the Elixir service does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import orjson

from batch_pipeline.intake.endpoints import ENDPOINTS, SUPPORTED_URLS
from batch_pipeline.intake.tokens import count_embedding_inputs, estimate_tokens
from batch_pipeline.redaction import header_errors
from batch_pipeline.store.records import NewRequest
from batch_pipeline.url_policy import UrlPolicy

TOP_LEVEL_FIELDS = ("custom_id", "url", "method", "body", "delivery_config")
QUEUE_NAME_MAX_BYTES = 255  # AMQP short string
# A btree index row holds at most 2,704 bytes; the unique index on custom_id needs some margin.
CUSTOM_ID_MAX_BYTES = 2048
# Levels of arrays and objects in ``body`` (the body object is one), or any other field. Real requests
# stay far below (a structured-output schema nests at most 10 levels); the bound keeps every walk of a
# body, and orjson's encoder (255 levels), clear of the recursion limits.
MAX_BODY_DEPTH = 128
# The model is a key of the index the batching sensor scans (endpoint, model, id), whose rows hold at
# most 2,704 bytes; real model names are a few dozen characters.
MODEL_MAX_BYTES = 256
# The webhook URL is copied into the request row and every delivery attempt; real ones are short, and
# 2,048 bytes (UTF-8) is what browsers and proxies commonly accept.
MAX_WEBHOOK_URL_BYTES = 2048


@dataclass(frozen=True)
class Limits:
    custom_id_max_length: int = 512
    batch_max_bytes: int = 199_000_000
    token_safety_factor: float = 1.1
    queue_prefixes: tuple[str, ...] = ()  # RABBITMQ_ALLOWED_QUEUES; empty: any queue


class RequestTooLarge(ValueError):
    """The request cannot fit in any batch; HTTP answers 413."""


def error(detail: str, pointer: str, code: str = "validation_error", title: str = "Invalid value") -> dict:
    return {"code": code, "title": title, "detail": detail, "source": {"pointer": pointer}}


@lru_cache(maxsize=4096)
def is_http_url(url: str) -> bool:
    # Cached: bulk submissions usually share one webhook URL.
    try:
        parts = urlsplit(url)
        # .port raises ValueError for a port that is not a number or is over 65535.
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # e.g. an invalid IPv6 literal or port
        return False


def _delivery_errors(
    cfg: Any, pointer: str, url_policy: UrlPolicy | None, queue_prefixes: tuple[str, ...] = ()
) -> list[dict]:
    if not isinstance(cfg, dict):
        return [error("delivery_config must be an object", pointer)]
    kind = cfg.get("type")
    if kind == "webhook":
        allowed = {"type", "webhook_url", "headers"}
        errs = [error(f"Unexpected field: {k}", f"{pointer}/{k}") for k in cfg if k not in allowed]
        if "headers" in cfg:
            errs += [
                error(detail, f"{pointer}/headers/{name}" if name else f"{pointer}/headers")
                for detail, name in header_errors(cfg["headers"])
            ]
        url = cfg.get("webhook_url")
        if not isinstance(url, str) or not url:
            return [*errs, error("webhook_url is required and must be a string", f"{pointer}/webhook_url")]
        # Before any parsing (and the URL caches): a huge URL is refused on its length alone.
        if len(url) > MAX_WEBHOOK_URL_BYTES // 4 and (
            len(url.encode("utf-8", "surrogatepass")) > MAX_WEBHOOK_URL_BYTES
        ):
            errs.append(
                error(f"webhook_url must be at most {MAX_WEBHOOK_URL_BYTES} bytes", f"{pointer}/webhook_url")
            )
        elif not is_http_url(url):
            errs.append(
                error("webhook_url must be an http or https URL with a host", f"{pointer}/webhook_url")
            )
        elif url_policy and (reason := url_policy(url)):
            errs.append(error(reason, f"{pointer}/webhook_url", code="webhook_url_not_allowed"))
        return errs
    if kind == "rabbitmq":
        errs = []
        for legacy in ("rabbitmq_exchange", "rabbitmq_routing_key"):
            if legacy in cfg:
                errs.append(
                    error(f"{legacy} is no longer supported; use rabbitmq_queue only", f"{pointer}/{legacy}")
                )
        errs += [
            error(f"Unexpected field: {k}", f"{pointer}/{k}")
            for k in cfg
            if k not in ("type", "rabbitmq_queue", "rabbitmq_exchange", "rabbitmq_routing_key")
        ]
        queue = cfg.get("rabbitmq_queue")
        if not isinstance(queue, str) or not queue.strip():
            errs.append(
                error(
                    "rabbitmq_queue is required and must be a non-empty string", f"{pointer}/rabbitmq_queue"
                )
            )
        elif len(queue.encode()) > QUEUE_NAME_MAX_BYTES:
            errs.append(error("rabbitmq_queue must be at most 255 bytes", f"{pointer}/rabbitmq_queue"))
        elif queue_prefixes and not queue.startswith(queue_prefixes):
            detail = f"rabbitmq_queue is not allowed: it must start with one of {', '.join(queue_prefixes)}"
            errs.append(error(detail, f"{pointer}/rabbitmq_queue", code="rabbitmq_queue_not_allowed"))
        return errs
    return [error("delivery_config.type must be 'webhook' or 'rabbitmq'", f"{pointer}/type")]


def _body_errors(url: Any, body: Any, pointer: str) -> list[dict]:
    if not isinstance(body, dict):
        return [error("body must be an object", pointer)]
    errs = []
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        errs.append(error("body.model is required and must be a non-empty string", f"{pointer}/model"))
    elif len(model.encode("utf-8", "surrogatepass")) > MODEL_MAX_BYTES:
        errs.append(error(f"body.model must be at most {MODEL_MAX_BYTES} bytes", f"{pointer}/model"))
    if body.get("stream") is True:
        errs.append(error("stream: true is not supported by the Batch API", f"{pointer}/stream"))
    endpoint = ENDPOINTS.get(url) if isinstance(url, str) else None
    if endpoint and endpoint.max_inputs and count_embedding_inputs(body) > endpoint.max_inputs:
        errs.append(error(f"at most {endpoint.max_inputs} inputs per request", f"{pointer}/input"))
    return errs


def _scan(value: Any, max_depth: int) -> tuple[bool, bool]:
    """``(has_nul, too_deep)``: whether any string or key holds U+0000, and whether arrays and
    objects nest more than ``max_depth`` levels. Iterative: a hostile body cannot exhaust the stack."""
    if isinstance(value, str):
        return "\x00" in value, False
    if not isinstance(value, dict | list):
        return False, False
    has_nul = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return has_nul, True
        if isinstance(item, dict):
            has_nul = has_nul or any("\x00" in k for k in item if isinstance(k, str))
            item = item.values()
        for v in item:
            if isinstance(v, str):
                has_nul = has_nul or "\x00" in v
            elif isinstance(v, dict | list):
                stack.append((v, depth + 1))
    return has_nul, False


def _dump_line(line: dict) -> bytes:
    """Compact UTF-8 JSON. orjson is several times faster; integers beyond 64 bits need the stdlib."""
    try:
        return orjson.dumps(line)
    except orjson.JSONEncodeError:
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def validate_request(
    obj: Any, limits: Limits, pointer: str = "", url_policy: UrlPolicy | None = None
) -> NewRequest | list[dict]:
    """Validate one decoded request object. Raises ``RequestTooLarge`` when no batch could hold it."""
    if not isinstance(obj, dict):
        return [error("request must be a JSON object", pointer or "/")]
    errs = [error(f"Missing field: {f}", f"{pointer}/{f}") for f in TOP_LEVEL_FIELDS if f not in obj]
    errs += [error(f"Unexpected field: {k}", f"{pointer}/{k}") for k in obj if k not in TOP_LEVEL_FIELDS]

    custom_id = obj.get("custom_id")
    if "custom_id" in obj:
        if not isinstance(custom_id, str) or not custom_id.strip():
            errs.append(error("custom_id must be a non-empty string", f"{pointer}/custom_id"))
        elif custom_id != custom_id.strip():
            errs.append(error("custom_id must not start or end with whitespace", f"{pointer}/custom_id"))
        elif len(custom_id) > limits.custom_id_max_length or len(custom_id.encode()) > CUSTOM_ID_MAX_BYTES:
            errs.append(
                error(
                    f"custom_id must be at most {limits.custom_id_max_length} characters",
                    f"{pointer}/custom_id",
                )
            )
    url = obj.get("url")
    if "url" in obj and (not isinstance(url, str) or url not in ENDPOINTS):
        errs.append(error(f"url must be one of: {', '.join(SUPPORTED_URLS)}", f"{pointer}/url"))
    if "method" in obj and obj["method"] != "POST":
        errs.append(error("method must be POST", f"{pointer}/method"))
    if "body" in obj:
        errs += _body_errors(url, obj["body"], f"{pointer}/body")
    if "delivery_config" in obj:
        errs += _delivery_errors(
            obj["delivery_config"], f"{pointer}/delivery_config", url_policy, limits.queue_prefixes
        )
    has_nul = any("\x00" in k for k in obj if isinstance(k, str))
    for key, value in obj.items():
        nul, too_deep = _scan(value, MAX_BODY_DEPTH)
        has_nul = has_nul or nul
        if too_deep:
            errs.append(
                error(
                    f"{key} is nested too deeply (at most {MAX_BODY_DEPTH} levels of arrays and objects)",
                    f"{pointer}/{key}",
                )
            )
    if errs:
        return errs

    if has_nul:
        # Postgres text and jsonb cannot hold U+0000; OpenAI has no use for it either.
        return [error("text must not contain the NUL character (U+0000)", pointer or "/")]
    body = obj["body"]
    # The line OpenAI receives: delivery_config never leaves this service.
    try:
        payload_bytes_raw = _dump_line({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
    except ValueError:
        return [error("body must not contain NaN or Infinity", f"{pointer}/body")]
    payload = payload_bytes_raw.decode()
    payload_bytes = len(payload_bytes_raw)
    if payload_bytes + 1 > limits.batch_max_bytes:
        raise RequestTooLarge(
            f"request is {payload_bytes} bytes as a batch line; "
            f"a batch file holds at most {limits.batch_max_bytes} bytes"
        )
    delivery = obj["delivery_config"]
    if delivery["type"] == "webhook":
        headers = delivery.get("headers")
        delivery = {"type": "webhook", "webhook_url": delivery["webhook_url"]}
        if headers:
            delivery["headers"] = headers
    else:
        delivery = {"type": "rabbitmq", "rabbitmq_queue": delivery["rabbitmq_queue"]}
    return NewRequest(
        custom_id=custom_id,
        url=url,
        model=body["model"],
        payload=payload,
        payload_bytes=payload_bytes,
        estimated_tokens=estimate_tokens(payload, payload_bytes, body, limits.token_safety_factor),
        delivery_config=delivery,
        input_count=count_embedding_inputs(body) if url == "/v1/embeddings" else 1,
    )
