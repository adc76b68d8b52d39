"""Hostile bulk bodies at the default size limit: what they cost the API process.

For each body (tiny items, deep nesting, one huge NDJSON line, tiny NDJSON lines) a fresh API process
takes one POST while a second thread asks ``/health`` every 20 ms. Reported: the process's peak RSS
growth (VmHWM, exact) over the body's size (target <= 2), and the longest ``/health`` answer during the
call per MiB of body (target <= 100 ms/MiB; the baseline is the same probe against the idle process).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.report_file import note
from bench.support import fresh_database, postgres_server, report, uvicorn_process

MIB = 1024 * 1024
SIZE = 256 * MIB - 1024  # just under the default BULK_MAX_BODY_BYTES


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


@contextlib.contextmanager
def _api(dsn: str) -> Iterator[tuple[str, int]]:
    pids: list[int] = []
    env = {"DATABASE_URL": dsn, "OPENAI_API_KEY": "", "API_TOKEN": ""}
    with uvicorn_process("intake_api.main:create_app", env, factory=True, pids=pids) as base:
        yield base, pids[0]


def _probe(base: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get("/health")
            worst[0] = max(worst[0], time.perf_counter() - start)
            time.sleep(0.02)


def _bodies() -> Iterator[tuple[str, bytes, str]]:
    yield "JSON array of tiny items [0,0,...]", b"[" + b"0," * (SIZE // 2 - 1) + b"0]", "application/json"
    half = SIZE // 2
    yield "JSON array nested 128M deep", b"[" * half + b"]" * half, "application/json"
    yield "NDJSON: one 256 MiB line", b'{"x":"' + b"a" * (SIZE - 9) + b'"}\n', "application/x-ndjson"
    yield "NDJSON: tiny lines 0\\n0\\n...", b"0\n" * (SIZE // 2), "application/x-ndjson"


def _one(server_url: str, body: bytes, content_type: str) -> tuple[float, float, int]:
    """(peak RSS growth in bytes, worst /health seconds during the call, status)."""
    with fresh_database(server_url) as dsn, _api(dsn) as (base, pid):
        httpx.get(base + "/health")
        before = _kib(pid, "VmRSS") * 1024
        stop, worst = threading.Event(), [0.0]
        prober = threading.Thread(target=_probe, args=(base, stop, worst))
        prober.start()
        try:
            status = httpx.post(
                base + "/api/requests/bulk", content=body, headers={"content-type": content_type}, timeout=600
            ).status_code
        finally:
            stop.set()
            prober.join()
        return _kib(pid, "VmHWM") * 1024 - before, worst[0], status


def main() -> None:
    with postgres_server() as server_url:
        with fresh_database(server_url) as dsn, _api(dsn) as (base, _):
            stop, idle = threading.Event(), [0.0]
            timer = threading.Timer(2.0, stop.set)
            timer.start()
            _probe(base, stop, idle)
        print(f"hostile bulk bodies of {SIZE / MIB:.0f} MiB, one fresh API process each")
        report("baseline: worst /health answer, idle process", idle[0] * 1000, "ms")
        for name, body, content_type in _bodies():
            grown, worst, status = _one(server_url, body, content_type)
            print(f"  {name}: answered {status}")
            note(f"{name}: answered {status}.")
            report(f"{name}: peak RSS growth / body size", grown / len(body), "x", goal=("<=", 2))
            report(
                f"{name}: worst /health answer during the call",
                worst * 1000 / (len(body) / MIB),
                "ms/MiB",
                goal=("<=", 100),
            )
            del body


if __name__ == "__main__":
    main()
