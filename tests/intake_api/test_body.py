"""``intake_api.body``: NDJSON lines found across any chunking of the body."""

from __future__ import annotations

import asyncio
import random

import pytest

from intake_api.body import stream_ndjson
from intake_api.errors import ApiError


class FakeRequest:
    """Only what ``stream_ndjson`` reads of a Starlette request: headers and the body stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.headers: dict[str, str] = {}
        self._chunks = chunks

    async def stream(self):
        for chunk in self._chunks:
            yield chunk


def lines_of(chunks: list[bytes], max_bytes: int = 1 << 30) -> list[bytes]:
    async def run() -> list[bytes]:
        return [line async for batch in stream_ndjson(FakeRequest(chunks), max_bytes) for line in batch]

    return asyncio.run(run())


def test_lines_are_the_same_however_the_body_is_cut() -> None:
    body = b'{"a":1}\n\n  \n{"b":"' + b"x" * 5000 + b'"}\r\n{"c":3}'
    expected = [b'{"a":1}', b'{"b":"' + b"x" * 5000 + b'"}\r', b'{"c":3}']
    rng = random.Random(5)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randrange(0, 40)))
        chunks = [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert lines_of(chunks) == expected, cuts
    assert lines_of([body[i : i + 1] for i in range(len(body))]) == expected  # one byte at a time


def test_a_line_spanning_many_chunks_is_joined_once_and_whole() -> None:
    line = b'{"x":"' + b"a" * 1_000_000 + b'"}'
    chunks = [line[i : i + 4096] for i in range(0, len(line), 4096)]
    assert lines_of([*chunks, b"\n", b'{"y":1}']) == [line, b'{"y":1}']
    assert lines_of(chunks) == [line]  # no final newline


def test_a_body_over_the_cap_is_refused() -> None:
    with pytest.raises(ApiError) as caught:
        lines_of([b'{"a":1}\n', b"x" * 100], max_bytes=50)
    assert caught.value.status == 413
