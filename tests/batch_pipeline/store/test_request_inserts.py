"""The bulk COPY writer on a real Postgres: text that COPY must escape, buffer flushes, races."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from msgspec.structs import astuple

from batch_pipeline.store.records import NewRequest
from batch_pipeline.store.request_inserts import COPY_REQUESTS, BulkWriter, copy_line, copy_row

STORED = (
    "SELECT custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config,"
    " input_count FROM batchman.requests ORDER BY id"
)


def request(custom_id: str, model: str = "gpt-4o-mini", text: str = "hi", **config: str) -> NewRequest:
    payload = (
        '{"custom_id":"x","method":"POST","url":"/v1/chat/completions",'
        f'"body":{{"model":"m",\t"messages":[{{"role":"user","content":"{text}"}}]}}}}'
    )
    return NewRequest(
        custom_id=custom_id,
        url="/v1/chat/completions",
        model=model,
        payload=payload,
        payload_bytes=len(payload.encode()),
        estimated_tokens=7,
        delivery_config=config or {"type": "webhook", "webhook_url": "https://hooks.example.com/r"},
        input_count=1,
    )


# Every character COPY's text format treats specially, where it can occur in each text column.
AWKWARD = [
    request("tab\there", model="model\twith tab"),
    request("line\nbreak", model="back\\slash", text='quote \\" and \\\\ escapes'),
    request("carriage\rreturn", text="caf\u00e9 \u6f22\u5b57 \U0001f600"),
    request("\\N", model="\\N"),  # COPY's NULL marker, as literal text
    request("trailing\\", type="rabbitmq", rabbitmq_queue="q\\with\tstuff"),
    request("url", webhook_url="https://h.example.com/a\\b?c=d\te", type="webhook"),
]


def _write(db_url: str, requests: list[NewRequest], flush_chars: int | None = None) -> bool:
    async def run() -> bool:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            writer = BulkWriter(conn)
            if flush_chars is not None:
                writer.FLUSH_CHARS = flush_chars
            async with writer:
                for r in requests:
                    if writer.add(r):
                        await writer.flush()
            return writer.raced

    return asyncio.run(run())


def _stored(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(STORED).fetchall()


def _expected(r: NewRequest) -> tuple:
    return astuple(r)  # its fields are in STORED's order


def test_awkward_text_is_stored_exactly(db_url: str) -> None:
    assert _write(db_url, AWKWARD) is False
    assert _stored(db_url) == [_expected(r) for r in AWKWARD]


def test_copy_line_stores_what_psycopg_write_row_stores(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy(COPY_REQUESTS) as copy:
            for r in AWKWARD:
                copy.write_row(copy_row(r))
        by_psycopg = cur.execute(STORED).fetchall()
        cur.execute("DELETE FROM batchman.requests")
        with cur.copy(COPY_REQUESTS) as copy:
            copy.write("".join(copy_line(r) for r in AWKWARD))
        assert cur.execute(STORED).fetchall() == by_psycopg


@pytest.mark.parametrize("flush_chars", [1, 1000, 10**9])
def test_rows_are_stored_in_order_whatever_the_buffer_size(db_url: str, flush_chars: int) -> None:
    requests = [request(f"r-{i}", text="x" * (i % 50)) for i in range(500)]
    assert _write(db_url, requests, flush_chars) is False
    assert [row[0] for row in _stored(db_url)] == [r.custom_id for r in requests]


@pytest.mark.parametrize("flush_chars", [1, 10**9])
def test_an_existing_custom_id_aborts_the_copy_and_stores_nothing(db_url: str, flush_chars: int) -> None:
    assert _write(db_url, [request("taken")]) is False
    fresh = [request(f"new-{i}") for i in range(300)]
    assert _write(db_url, [*fresh[:150], request("taken"), *fresh[150:]], flush_chars) is True
    assert [row[0] for row in _stored(db_url)] == ["taken"]


def test_an_error_in_the_caller_rolls_the_copy_back(db_url: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, BulkWriter(conn) as writer:
            for i in range(10):
                writer.add(request(f"r-{i}"))
            await writer.flush()
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        asyncio.run(run())
    assert _stored(db_url) == []
