"""Reading request bodies with a size cap, and decoding JSON or NDJSON into items."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from batch_pipeline.intake import Undecodable
from intake_api.errors import ApiError


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed ``max_bytes`` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", "Payload Too Large", f"The request body exceeds {max_bytes} bytes."
    )


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            422, "invalid_json", "Invalid JSON", f"The body is not valid JSON: {exc}", "/"
        ) from None


def decode_items(raw: bytes, content_type: str) -> list[Any]:
    """A JSON array, or NDJSON (one object per line, blank lines ignored) for ``application/x-ndjson``.

    A bad NDJSON line becomes an ``Undecodable`` item, reported in its place, not a failed call.
    """
    if "ndjson" in content_type or "jsonl" in content_type:
        items: list[Any] = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                items.append(Undecodable(f"line is not valid JSON: {exc}"))
        return items
    data = decode_json(raw)
    if not isinstance(data, list):
        raise ApiError(
            422, "validation_error", "Invalid value", "The body must be a JSON array of requests.", "/"
        )
    return data
