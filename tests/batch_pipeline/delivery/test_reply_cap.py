"""What a failing receiver answered is stored with the attempt, capped at 512 UTF-8 bytes: a real local
receiver answers 500 with a 10 KB body, the real deliverer records it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiohttp import web

from batch_pipeline.delivery.deliverer import deliver_batch
from batch_pipeline.store.records import MAX_REPLY_BYTES, truncate_bytes
from tests.batch_pipeline.delivery.conftest import Receiver, attempts_of, options, seed_batch, serve, webhook


@dataclass
class ReplyingReceiver(Receiver):
    """Answers every request with ``status`` and ``body`` (bytes, sent as they are)."""

    status: int = 500
    body: bytes = b""

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        await req.read()
        return web.Response(status=self.status, body=self.body, content_type="text/plain")


@pytest.mark.parametrize(
    "body",
    [
        b"x" * 10_240,
        "é".encode() * 5_120,  # 10 KB of two-byte characters: 512 bytes would cut one in half
        "😀".encode() * 2_560,  # four-byte characters
        b"\x00" * 10_240,  # Postgres text cannot hold NUL
    ],
    ids=["ascii", "two-byte", "four-byte", "nul"],
)
def test_a_10_kb_error_reply_is_stored_cut_to_512_bytes(db_url: str, body: bytes) -> None:
    with serve(ReplyingReceiver(status=500, body=body)) as rx:
        batch_id, (rid,) = seed_batch(db_url, [webhook(rx.url)])
        asyncio.run(deliver_batch(db_url, batch_id, options(schedule=(3600.0,))))
    (attempt,) = attempts_of(db_url, rid)
    assert (attempt["outcome"], attempt["http_status"]) == ("http_status_not_2xx", 500)
    stored: str = attempt["error_msg"]
    assert MAX_REPLY_BYTES - 4 <= len(stored.encode()) <= MAX_REPLY_BYTES
    assert stored.endswith("…")
    kept = stored.removesuffix("…")
    assert kept == body.decode().replace("\x00", "\ufffd")[: len(kept)]  # a prefix, no broken character


def test_truncate_bytes_keeps_short_text_and_cuts_on_character_boundaries() -> None:
    assert truncate_bytes("answer 500") == "answer 500"
    assert truncate_bytes("é" * 256) == "é" * 256  # exactly 512 bytes: kept whole
    cut = truncate_bytes("é" * 257)
    assert cut == "é" * 254 + "…" and len(cut.encode()) == 511
    assert truncate_bytes("ab\x00") == "ab\ufffd"
    assert truncate_bytes("x" * 10, max_bytes=8) == "xxxxx…"
