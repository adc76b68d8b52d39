"""Reading request bodies with a size cap, and splitting bulk bodies into raw items.

Items stay raw JSON bytes: the intake service decodes and checks each one in C on its fast path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import orjson
from fastapi import Request

from intake_api.errors import ApiError

_split_array = msgspec.json.Decoder(list[msgspec.Raw]).decode


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


async def stream_ndjson(request: Request, max_bytes: int) -> AsyncIterator[list[bytes]]:
    """The lines of an NDJSON body, a list per received chunk, so parsing overlaps the upload and COPY.

    Blank lines are skipped; a line that is not JSON is reported as an invalid item in its place.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    pending, size = b"", 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield [line for line in lines if line.strip()]
    if pending.strip():
        yield [pending]


def is_ndjson(content_type: str) -> bool:
    return "ndjson" in content_type or "jsonl" in content_type


def split_array(raw: bytes) -> list[bytes]:
    """The raw items of a JSON array body; 422 when the body is not JSON or not an array."""
    try:
        return [bytes(item) for item in _split_array(raw)]
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            422, "invalid_json", "Invalid JSON", f"The body is not valid JSON: {exc}", "/"
        ) from None
    raise ApiError(
        422, "validation_error", "Invalid value", "The body must be a JSON array of requests.", "/"
    )
