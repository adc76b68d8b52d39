"""Intake throughput: single POSTs at concurrency 16 vs a minimal FastAPI+psycopg endpoint, and bulk
intake of 50,000 requests vs a raw COPY of the same rows, each baseline measured in the same run.

Targets (issue 15): single ratio >= 0.9; bulk (JSON array and NDJSON) >= 0.7 of raw COPY; 50,000
accepted in < 5 s (issue 2).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psycopg

from batch_pipeline.intake.validation import Limits, NewRequest, validate_request
from batch_pipeline.store.request_inserts import COPY_COLUMNS, copy_row
from bench.support import fresh_database, postgres_server, report, uvicorn_process

SINGLE_REQUESTS = 3000
CONCURRENCY = 16
REQUESTS_PER_BULK_CALL = 50_000
SINGLE_ROUNDS = 3
# A bulk round takes about a second, so more of them even out this machine's slow spells.
ROUNDS_OF_BULK = 5


def make_request(i: int, prefix: str) -> dict:
    return {
        "custom_id": f"{prefix}-{i}",
        "url": "/v1/chat/completions",
        "method": "POST",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
                {"role": "user", "content": f"Question number {i}: what is the capital of France? " * 4},
            ],
            "temperature": 0,
        },
        "delivery_config": {"type": "webhook", "webhook_url": "https://hooks.example.com/results?k=1"},
    }


async def _fire(base: str, prefix: str, count: int) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            async with sem:
                r = await client.post("/api/requests", json=make_request(i, prefix))
                if r.status_code != 202:
                    raise RuntimeError(f"unexpected {r.status_code}: {r.text}")

        await asyncio.gather(*(one(i) for i in range(100)))  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(100, 100 + count)))
        return count / (time.perf_counter() - start)


def bench_single(server_url: str) -> None:
    print(f"single POST /api/requests, {SINGLE_REQUESTS} requests at concurrency {CONCURRENCY}", end="")
    print(f", best of {SINGLE_ROUNDS}")
    with (
        fresh_database(server_url, migrated=False) as base_dsn,
        uvicorn_process("bench.baseline_app:app", {"DATABASE_URL": base_dsn}) as base_url,
        fresh_database(server_url) as dsn,
        uvicorn_process(
            "intake_api.main:create_app", {"DATABASE_URL": dsn, "OPENAI_API_KEY": ""}, factory=True
        ) as ours_url,
    ):
        # Rounds alternate between the two servers, so a slow spell of the machine hits both.
        baseline = ours = 0.0
        for round_ in range(SINGLE_ROUNDS):
            baseline = max(baseline, asyncio.run(_fire(base_url, f"base{round_}", SINGLE_REQUESTS)))
            ours = max(ours, asyncio.run(_fire(ours_url, f"ours{round_}", SINGLE_REQUESTS)))
    report("baseline: minimal FastAPI + one INSERT", baseline, "req/s")
    report(
        "ours: POST /api/requests (validate + store), concurrency 16",
        ours,
        "req/s",
        baseline=baseline,
        ratio_goal=(">=", 0.9),
    )


def _raw_copy_seconds(dsn: str, rows: list[NewRequest]) -> float:
    start = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cols = COPY_COLUMNS
        with cur.copy(f"COPY batchman.requests {cols} FROM STDIN") as copy:
            for r in rows:
                copy.write_row(copy_row(r))
    return time.perf_counter() - start


def _post_bulk(server_url: str, body: bytes, content_type: str) -> float:
    with (
        fresh_database(server_url) as dsn,
        uvicorn_process(
            "intake_api.main:create_app", {"DATABASE_URL": dsn, "OPENAI_API_KEY": ""}, factory=True
        ) as base,
    ):
        start = time.perf_counter()
        r = httpx.post(
            base + "/api/requests/bulk", content=body, headers={"content-type": content_type}, timeout=120
        )
        seconds = time.perf_counter() - start
        if r.status_code != 200 or r.json()["accepted"] != REQUESTS_PER_BULK_CALL:
            raise RuntimeError(f"bulk intake failed: {r.status_code} {r.text[:300]}")
    return seconds


def bench_bulk(server_url: str) -> None:
    print(f"bulk intake of {REQUESTS_PER_BULK_CALL} requests, best of {ROUNDS_OF_BULK}")
    items = [make_request(i, "bulk") for i in range(REQUESTS_PER_BULK_CALL)]
    rows = [validate_request(item, Limits()) for item in items]
    as_array = json.dumps(items).encode()
    as_ndjson = b"\n".join(json.dumps(item).encode() for item in items) + b"\n"
    copy_s = array_s = ndjson_s = float("inf")
    for _ in range(ROUNDS_OF_BULK):
        with fresh_database(server_url) as dsn:
            copy_s = min(copy_s, _raw_copy_seconds(dsn, rows))  # type: ignore[arg-type]
        array_s = min(array_s, _post_bulk(server_url, as_array, "application/json"))
        ndjson_s = min(ndjson_s, _post_bulk(server_url, as_ndjson, "application/x-ndjson"))
    copy_rate = REQUESTS_PER_BULK_CALL / copy_s
    report("baseline: raw COPY of the same rows", copy_rate, "rows/s")
    for label, seconds in (("a JSON array", array_s), ("NDJSON (streamed)", ndjson_s)):
        rate = REQUESTS_PER_BULK_CALL / seconds
        report(f"ours: bulk as {label}", rate, "rows/s", baseline=copy_rate, ratio_goal=(">=", 0.7))
        report(f"ours: wall time for 50,000 as {label}", seconds, "s", goal=("<", 5))


class _Chunks:
    """What ``stream_ndjson`` reads of a request: a body arriving in 64 KiB chunks, as uvicorn hands it."""

    def __init__(self, body: bytes) -> None:
        self.headers: dict[str, str] = {}
        self._chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def stream(self):
        for chunk in self._chunks:
            yield chunk


def bench_ndjson_long_line() -> None:
    """A hostile NDJSON body: one 32 MiB line. Splitting it holds the event loop; target ~100 ms/MiB."""
    from intake_api.body import stream_ndjson

    mib = 32
    body = b'{"x":"' + b"a" * (mib * 1024 * 1024) + b'"}\n'

    async def split() -> int:
        return sum([len(batch) async for batch in stream_ndjson(_Chunks(body), len(body))])

    start = time.perf_counter()
    joined = b"".join(_Chunks(body)._chunks)  # the floor: putting the chunks together once
    floor = time.perf_counter() - start
    assert joined == body
    start = time.perf_counter()
    assert asyncio.run(split()) == 1
    ours = time.perf_counter() - start
    print(f"NDJSON body of one {mib} MiB line, in 64 KiB chunks")
    report("baseline: join the chunks once", floor * 1000 / mib, "ms/MiB")
    report(
        "ours: stream_ndjson (event loop held)",
        ours * 1000 / mib,
        "ms/MiB",
        baseline=floor * 1000 / mib,
        goal=("<=", 100),
    )


def main() -> None:
    with postgres_server() as server_url:
        bench_single(server_url)
        bench_bulk(server_url)
    bench_ndjson_long_line()


if __name__ == "__main__":
    main()
