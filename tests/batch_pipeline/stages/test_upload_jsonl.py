"""The input file is written straight from COPY: byte for byte the stored payloads, in id order, only
the batch's pending requests; a payload COPY would quote (a row written another way) falls back to the
row-by-row path and still comes out as stored."""

from __future__ import annotations

import io
import json

import psycopg
import pytest

from batch_pipeline.db import connect
from batch_pipeline.store.batches import iter_batch_lines, write_batch_lines

TRICKY = [
    {"content": 'quote " backslash \\ slash / tab \t newline \n'},
    {"content": "unicode é ü 中文 🎉 and \u2028 separator"},
    {"content": "a comma, a semicolon; a pipe | and \\x02 as text"},
    {"content": ""},
]


def _store(db_url: str, payloads: list[str], state: str = "pending") -> int:
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state) VALUES ('/v1/chat/completions', 'm',"
            " 'uploading') RETURNING id"
        ).fetchone()[0]
        for i, payload in enumerate(payloads):
            conn.execute(
                "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
                " estimated_tokens, delivery_config, state, batch_id)"
                " VALUES (%s, '/v1/chat/completions', 'm', %s, %s, 1, '{}', %s, %s)",
                (f"{batch_id}-{state}-{i}", payload, len(payload.encode()), state, batch_id),
            )
    return batch_id


def _written(db_url: str, batch_id: int) -> tuple[bytes, int]:
    out = io.BytesIO(b"")
    with connect(db_url) as conn:
        count = write_batch_lines(conn, batch_id, out)
    return out.getvalue(), count


def test_the_file_is_the_stored_payloads_in_order(db_url: str) -> None:
    payloads = [
        json.dumps({"custom_id": f"c{i}", "body": b}, ensure_ascii=False) for i, b in enumerate(TRICKY)
    ]
    payloads += [json.dumps({"custom_id": f"n{i}", "body": {"x": i}}) for i in range(3000)]
    batch_id = _store(db_url, payloads)
    with psycopg.connect(db_url) as conn:  # a request no longer pending is not in the file
        conn.execute(
            "UPDATE batchman.requests SET state = 'cancelled' WHERE batch_id = %s AND custom_id LIKE %s",
            (batch_id, "%7"),
        )
    kept = [p for i, p in enumerate(payloads) if i % 10 != 7]
    data, count = _written(db_url, batch_id)
    assert data == "".join(p + "\n" for p in kept).encode()
    assert count == len(kept)
    with connect(db_url) as conn:
        assert data == "".join(line + "\n" for line in iter_batch_lines(conn, batch_id)).encode()


@pytest.mark.parametrize("odd", ["raw\rreturn", "raw\nnewline", "ctrl\x01byte", "ctrl\x02byte"])
def test_a_payload_copy_would_quote_comes_out_as_stored(db_url: str, odd: str) -> None:
    payloads = ['{"a":1}', '{"b":"' + odd + '"}', '{"c":3}']
    batch_id = _store(db_url, payloads)
    data, count = _written(db_url, batch_id)
    assert data == "".join(p + "\n" for p in payloads).encode()
    assert count == 3


def test_an_empty_batch_writes_nothing(db_url: str) -> None:
    assert _written(db_url, _store(db_url, [])) == (b"", 0)
