"""Reading request bodies with a size cap, and splitting bulk bodies into raw items.

Items stay raw JSON bytes: the intake service decodes and checks each one in C on its fast path.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
import orjson
from fastapi import Request

from intake_api.errors import ApiError

_split_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
# What matters for finding the items of an array: strings (whose brackets and commas are text), an
# unterminated string, brackets and commas.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},]', re.S)
_WHITESPACE = b" \t\r\n"


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
    # The unfinished line is kept as its parts and joined once, when its newline arrives: joining it to
    # every chunk as it grew made one long line quadratic (a 32 MiB line held the event loop 8.6 s).
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        head, *lines = chunk.split(b"\n")
        tail = lines.pop()
        first = b"".join((*pending, head)) if pending else head
        pending = [tail] if tail else []
        yield [line for line in (first, *lines) if _has_content(line)]
    last = b"".join(pending)
    if _has_content(last):
        yield [last]


def _has_content(line: bytes) -> bool:
    # Not ``line.strip()``: that copies the line, and a line may be the whole body.
    return bool(line) and not line.isspace()


def is_ndjson(content_type: str) -> bool:
    content_type = content_type.lower()  # media types are case-insensitive (RFC 9110)
    return "ndjson" in content_type or "jsonl" in content_type


def split_array(raw: bytes) -> list[bytes]:
    """The raw items of a JSON array body; 422 when the body is not JSON or not an array.

    An item that msgspec cannot take (not JSON, nested deeper than it recurses) does not fail the whole
    body: the items are then found by scanning brackets, and each is judged on its own.
    """
    try:
        return [bytes(item) for item in _split_array(raw)]
    except msgspec.ValidationError:
        pass  # JSON, but not an array
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        # Not JSON, or an array msgspec refuses as a whole for what one item holds (nesting deeper
        # than it recurses, invalid UTF-8, a lone surrogate escape): if the array itself is intact,
        # each item is judged on its own, as NDJSON lines are.
        items = _scan_items(raw)
        if items is not None:
            return items
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            422, "invalid_json", "Invalid JSON", f"The body is not valid JSON: {exc}", "/"
        ) from None
    raise ApiError(
        422, "validation_error", "Invalid value", "The body must be a JSON array of requests.", "/"
    )


def _scan_items(raw: bytes) -> list[bytes] | None:
    """The raw items of a top-level array, found without recursion, or None when it is not one.

    Only the array's own structure is checked: an item that is not valid JSON is reported in its place.
    """
    start = len(raw) - len(raw.lstrip(_WHITESPACE))
    if raw[start : start + 1] != b"[":
        return None
    items: list[bytes] = []
    depth, item_start = 0, start + 1
    for match in _STRUCTURE.finditer(raw, start):
        char = raw[match.start()]
        if char == 0x22:  # '"'
            if match.end() - match.start() == 1:
                return None  # an unterminated string
        elif char in b"[{":
            depth += 1
        elif char in b"]}":
            depth -= 1
            if depth == 0:
                if char != 0x5D:  # the array must close with ']'
                    return None
                item = raw[item_start : match.start()].strip(_WHITESPACE)
                if item:
                    items.append(item)
                elif items:
                    return None  # a trailing comma
                if raw[match.end() :].strip(_WHITESPACE):
                    return None  # something after the array
                return items
        elif depth == 1:  # a comma between items
            item = raw[item_start : match.start()].strip(_WHITESPACE)
            if not item:
                return None
            items.append(item)
            item_start = match.end()
    return None  # the array is never closed
