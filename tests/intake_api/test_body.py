"""``intake_api.body``: NDJSON lines found across any chunking of the body."""

from __future__ import annotations

import asyncio
import json
import random
import tracemalloc

import pytest

from intake_api.body import split_array, stream_ndjson
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


# --- JSON arrays: bounded memory, and the item limit found while scanning ------------------------------


def test_an_array_over_the_item_limit_is_refused_at_the_first_item_too_many() -> None:
    assert split_array(b"[1, 2 ,3]", 3) == [b"1", b"2", b"3"]
    with pytest.raises(ApiError) as caught:
        split_array(b"[1,2,3,4]", 3)
    assert (caught.value.status, caught.value.errors[0]["code"]) == (413, "too_many_items")


def test_the_bracket_scan_also_stops_at_the_item_limit() -> None:
    # An item msgspec refuses (not JSON) sends the body to the bracket scan, which counts as well.
    assert split_array(b"[1,x,3]", 3) == [b"1", b"x", b"3"]
    with pytest.raises(ApiError) as caught:
        split_array(b"[1,x,3,4]", 3)
    assert (caught.value.status, caught.value.errors[0]["code"]) == (413, "too_many_items")


@pytest.mark.parametrize("buffer", [bytes, bytearray])
def test_tiny_items_cost_no_object_each(buffer: type) -> None:
    body = buffer(b"[" + b"0," * (8 * 1024 * 1024) + b"0]")  # 16 MiB, 8 million items
    split_array(b"[0]", 50_000)  # the decoder is built once per process: not part of the figure
    tracemalloc.start()
    try:
        with pytest.raises(ApiError):
            split_array(body, 50_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # list[Raw] made an object per item: 28 times the body (here 470 MB). Now: one per allowed item.
    assert peak < len(body) // 4, peak


def test_a_long_line_spanning_chunks_comes_whole_and_is_accepted(tmp_path) -> None:
    from batch_pipeline.intake.service import IntakeService
    from batch_pipeline.store.records import NewRequest
    from tests.conftest import make_settings

    item = {
        "custom_id": "long",
        "url": "/v1/responses",
        "method": "POST",
        "body": {"model": "gpt-4o-mini", "input": "x" * (3 * 1024 * 1024)},
        "delivery_config": {"type": "rabbitmq", "rabbitmq_queue": "results"},
    }
    line = json.dumps(item).encode()
    chunks = [line[i : i + 65536] for i in range(0, len(line), 65536)] + [b"\n"]
    (got,) = lines_of(chunks)
    assert got == line
    checked = IntakeService(make_settings(tmp_path)).check(got, 0)
    assert isinstance(checked, NewRequest) and checked.custom_id == "long"
