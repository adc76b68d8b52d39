"""Reading request bodies with a size cap, and splitting bulk bodies into raw items.

Items stay raw JSON bytes: the intake service decodes and checks each one in C on its fast path.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import Any

import msgspec
import orjson
from fastapi import Request

from intake_api.errors import ApiError

# Bodies at least this large are split in a worker thread, so that other requests are served meanwhile.
THREAD_SPLIT_BYTES = 1024 * 1024
# What matters for finding the items of an array: strings (whose brackets and commas are text), an
# unterminated string, brackets and commas.
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{},]', re.S)
_WHITESPACE = b" \t\r\n"
_decode_any = msgspec.json.Decoder().decode
_ONLY_WHITESPACE = re.compile(rb"[ \t\r\n]*\Z")


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The raw body, or 413 as soon as it is known to exceed ``max_bytes`` (never buffered past it)."""
    return bytes(await read_buffer(request, max_bytes))


async def read_buffer(request: Request, max_bytes: int) -> bytearray:
    """``read_limited`` without the final copy: one buffer the chunks are appended to as they arrive
    (a list of chunks joined at the end held the body twice)."""
    declared = request.headers.get("content-length")
    expected = int(declared) if declared and declared.isdigit() else None
    if expected is not None and expected > max_bytes:
        raise _too_large(max_bytes)
    if expected is None:  # chunked: grow as it comes
        buffer = bytearray()
        async for chunk in request.stream():
            if len(buffer) + len(chunk) > max_bytes:
                raise _too_large(max_bytes)
            buffer += chunk
        return buffer
    # Allocated once at the declared size: growing a buffer holds the old and the new copy for a moment.
    buffer, size = bytearray(expected), 0
    async for chunk in request.stream():
        if size + len(chunk) > expected:  # more than declared: the server stops it; never past the cap
            raise _too_large(max_bytes) if size + len(chunk) > max_bytes else _length_mismatch()
        buffer[size : size + len(chunk)] = chunk
        size += len(chunk)
    del buffer[size:]
    return buffer


def _length_mismatch() -> ApiError:
    return ApiError(400, "bad_request", "Bad Request", "The body is longer than its Content-Length.")


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
    # The unfinished line grows in one buffer (amortised linear; joining it to every chunk as it grew
    # made one long line quadratic: a 32 MiB line held the event loop 8.6 s). A long line is handed on
    # as that buffer, not copied into bytes: the intake decodes it from there.
    pending = bytearray()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if b"\n" not in chunk:
            pending += chunk
            continue
        head, *lines = chunk.split(b"\n")
        tail = lines.pop()
        first: bytes | bytearray = head
        if pending:
            pending += head
            first = bytes(pending) if len(pending) < THREAD_SPLIT_BYTES else pending
            pending = bytearray()
        pending += tail
        yield [line for line in (first, *lines) if _has_content(line)]
    if _has_content(pending):
        yield [bytes(pending) if len(pending) < THREAD_SPLIT_BYTES else pending]


def _has_content(line: bytes | bytearray) -> bool:
    # Not ``line.strip()``: that copies the line, and a line may be the whole body.
    return bool(line) and not line.isspace()


def is_ndjson(content_type: str) -> bool:
    content_type = content_type.lower()  # media types are case-insensitive (RFC 9110)
    return "ndjson" in content_type or "jsonl" in content_type


@lru_cache(maxsize=2)
def _array_decoder(max_items: int) -> Callable[[bytes], Any]:
    """A decoder for an array of at most ``max_items`` raw items that stops at item ``max_items + 1``.

    ``list[Raw]`` makes an object of every item before any length check: ``[0,0,…]`` costs 28 times its
    size in memory (16 MiB of it: 588 MB). An array-like struct with one optional field per allowed item
    fails at the first item too many instead, having built nothing for what follows. Built once per
    process and size (50,000 fields: 0.3 s, 32 MB).
    """
    fields = [(f"i{n}", msgspec.Raw, None) for n in range(max_items)]
    shape = msgspec.defstruct("BulkArray", fields, array_like=True, forbid_unknown_fields=True, gc=False)
    return msgspec.json.Decoder(shape).decode


def prepare_bulk_decoder(max_items: int) -> None:
    """Build the decoder ``split_array`` uses for ``max_items`` (cached per process)."""
    _array_decoder(max_items)


def split_array(raw: bytes | bytearray, max_items: int) -> list[bytes]:
    """The raw items of a JSON array body; 422 when the body is not JSON or not an array, 413 when it
    holds more than ``max_items`` items (found out at item ``max_items + 1``, in bounded memory).

    An item that msgspec cannot take (not JSON, nested deeper than it recurses) does not fail the whole
    body: the items are then found by scanning brackets, and each is judged on its own.
    """
    try:
        decoded = _array_decoder(max_items)(raw)
        return [bytes(item) for item in msgspec.structs.astuple(decoded) if item is not None]
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `array` of at most length"):
            raise too_many_items(max_items) from None
        # JSON, but not an array
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        # Not JSON, or an array msgspec refuses as a whole for what one item holds (nesting deeper
        # than it recurses, invalid UTF-8, a lone surrogate escape): if the array itself is intact,
        # each item is judged on its own, as NDJSON lines are.
        items = _scan_items(raw, max_items)
        if items is not None:
            return items
    try:
        # For the message only. orjson words it best, but copies a large body twice on the way.
        orjson.loads(raw) if len(raw) < THREAD_SPLIT_BYTES else _decode_any(raw)
    except (orjson.JSONDecodeError, msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(
            422, "invalid_json", "Invalid JSON", f"The body is not valid JSON: {exc}", "/"
        ) from None
    raise ApiError(
        422, "validation_error", "Invalid value", "The body must be a JSON array of requests.", "/"
    )


def _item(raw: bytes | bytearray, start: int, end: int) -> bytes:
    """``raw[start:end]`` without surrounding whitespace, as bytes, copied once."""
    while start < end and raw[start] in _WHITESPACE:
        start += 1
    while end > start and raw[end - 1] in _WHITESPACE:
        end -= 1
    with memoryview(raw) as view:
        return bytes(view[start:end])


def too_many_items(max_items: int) -> ApiError:
    return ApiError(413, "too_many_items", "Too Many Items", f"At most {max_items} requests per bulk call.")


def _scan_items(raw: bytes | bytearray, max_items: int) -> list[bytes] | None:
    """The raw items of a top-level array, found without recursion, or None when it is not one.

    Only the array's own structure is checked: an item that is not valid JSON is reported in its place.
    Linear in the body (about 35 ms per MiB of brackets and commas) and stops at item ``max_items + 1``.
    """
    start = 0
    while start < len(raw) and raw[start] in _WHITESPACE:
        start += 1
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
                item = _item(raw, item_start, match.start())
                if item:
                    items.append(item)
                    if len(items) > max_items:
                        raise too_many_items(max_items)
                elif items:
                    return None  # a trailing comma
                if not _ONLY_WHITESPACE.match(raw, match.end()):
                    return None  # something after the array
                return items
        elif depth == 1:  # a comma between items
            item = _item(raw, item_start, match.start())
            if not item:
                return None
            items.append(item)
            if len(items) > max_items:
                raise too_many_items(max_items)
            item_start = match.end()
    return None  # the array is never closed
