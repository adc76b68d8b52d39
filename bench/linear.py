"""Linear cost (``python -m bench linear``): intake, upload, results and delivery of 10,000, 50,000 and
200,000 requests, each size in a fresh database, and the cost per request at each size.

Each stage handles every request of the size, cut as the pipeline cuts it: bulk NDJSON calls of at most
50,000 items (BULK_MAX_ITEMS) into the API in its own process, then batches of at most 50,000 (OpenAI's
cap), each uploaded by ``submit_batch`` (its first step fills the batch, as the upload run does),
completed at the simulator, stored by ``ingest_results`` and delivered by ``deliver_batch`` to a fast
local webhook receiver. Upload, results and delivery each run in a process of their own, so the peak
RSS printed is that stage's alone (the API's for intake). Setup between stages (completing batches at
the simulator, recording their status) is not timed.

Targets (issue 17): per-request cost at 200,000 within 1.3x of the one at 10,000; peak RSS < 300 MB.
``BENCH_LINEAR_SIZES`` (comma-separated) overrides the sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.delivery import receiver
from bench.pipeline import (
    ENDPOINT,
    MODEL,
    UNLIMITED,
    _finish_at_openai,
    _peak_rss_mb,
    connector,
    sdk,
    simulator,
)
from bench.report_file import note
from bench.support import free_port, fresh_database, postgres_server, report

_SIZES = tuple(int(s) for s in os.environ.get("BENCH_LINEAR_SIZES", "10000,50000,200000").split(","))
_PER_CALL = 50_000  # BULK_MAX_ITEMS, and OpenAI's requests per batch
_STAGES = ("intake", "upload", "results", "delivery")


def _item(i: int, hook: str) -> bytes:
    return json.dumps(
        {
            "custom_id": f"lin-{i}",
            "url": ENDPOINT,
            "method": "POST",
            "body": {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
                    {"role": "user", "content": f"Question number {i}: what is the capital of France? " * 4},
                ],
                "temperature": 0,
            },
            "delivery_config": {"type": "webhook", "webhook_url": hook},
        }
    ).encode()


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process (default: this one, all threads): unlike wall time, barely moved
    by other work on a shared machine."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _api(dsn: str) -> Iterator[tuple[str, int]]:
    """The API in its own uvicorn process: (base URL, pid). As ``bench.support.uvicorn_process``, but
    waiting up to three minutes for it to start (a loaded machine took more than the 30 s there)."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "intake_api.main:create_app", "--factory", "--port", str(port)]
    argv += ["--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "DATABASE_URL": dsn, "OPENAI_API_KEY": "", "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(argv, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def intake(dsn: str, n: int, hook: str) -> dict:
    """NDJSON bulk calls of at most 50,000 into the API; seconds of the calls only (bodies built before)."""
    seconds = cpu = 0.0
    with _api(dsn) as (base, pid):
        for start in range(0, n, _PER_CALL):
            body = b"\n".join(_item(i, hook) for i in range(start, min(n, start + _PER_CALL))) + b"\n"
            began, cpu_began = time.perf_counter(), _cpu_seconds(pid)
            r = httpx.post(
                base + "/api/requests/bulk",
                content=body,
                headers={"content-type": "application/x-ndjson"},
                timeout=600,
            )
            seconds += time.perf_counter() - began
            cpu += _cpu_seconds(pid) - cpu_began
            if r.status_code != 200 or r.json()["accepted"] != min(n, start + _PER_CALL) - start:
                raise RuntimeError(f"bulk intake failed: {r.status_code} {r.text[:300]}")
        rss = _process_peak_rss_mb(pid)
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": rss}


# --- the stages' own processes -------------------------------------------------------------------


def child_upload(dsn: str, sim: str) -> dict:
    """Open a batch as the sensor does and run the upload on it, until nothing is queued."""
    from batch_pipeline.db import connect
    from batch_pipeline.stages.upload import submit_batch
    from batch_pipeline.store.batching import open_batch

    client, remote_ids, seconds, cpu = sdk(sim), {}, 0.0, 0.0
    while True:
        began, cpu_began = time.perf_counter(), _cpu_seconds()
        with connect(dsn) as conn:
            batch_id = open_batch(conn, ENDPOINT, MODEL, "bench")
            conn.commit()
        assert batch_id is not None
        result = submit_batch(connector(dsn), client, batch_id, lambda _model: UNLIMITED, 0)
        seconds += time.perf_counter() - began
        cpu += _cpu_seconds() - cpu_began
        if result.outcome != "submitted":  # nothing left: the empty batch is resubmitted (dropped)
            break
        remote_ids[batch_id] = result.openai_batch_id
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": _peak_rss_mb(), "batches": remote_ids}


def child_results(dsn: str, sim: str, batch_ids: list[int]) -> dict:
    from batch_pipeline.stages.results import ingest_results

    client, seconds, stored = sdk(sim), 0.0, 0
    cpu_began = _cpu_seconds()
    for batch_id in batch_ids:
        began = time.perf_counter()
        stored += ingest_results(connector(dsn), client, batch_id, max_resubmits=3)["processed"]
        seconds += time.perf_counter() - began
    cpu = _cpu_seconds() - cpu_began
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": _peak_rss_mb(), "stored": stored}


def child_delivery(dsn: str, batch_ids: list[int]) -> dict:
    """As the deliver job does: move the batch to 'delivering', then deliver_batch with the defaults."""
    from batch_pipeline.config import load_settings
    from batch_pipeline.db import connect
    from batch_pipeline.delivery.deliverer import DeliveryOptions, deliver_batch
    from batch_pipeline.store.deliveries import begin_delivery

    settings = load_settings(_env_file=None, database_url=dsn, openai_api_key=None)
    opts = DeliveryOptions.from_settings(settings)
    seconds, delivered = 0.0, 0
    cpu_began = _cpu_seconds()
    for batch_id in batch_ids:
        began = time.perf_counter()
        with connect(dsn) as conn:
            assert begin_delivery(conn, batch_id, "bench") == "delivering"
        report = asyncio.run(deliver_batch(dsn, batch_id, opts))
        seconds += time.perf_counter() - began
        assert report.batch_state == "delivered", report.as_dict()
        delivered += report.states["delivered"]
    cpu = _cpu_seconds() - cpu_began
    return {"seconds": seconds, "cpu": cpu, "peak_rss_mb": _peak_rss_mb(), "delivered": delivered}


def _child(*args: str) -> dict:
    argv = [sys.executable, "-m", "bench.linear", "child", *args]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_size(server_url: str, sim: str, hook: str, n: int) -> dict[str, dict]:
    with fresh_database(server_url) as dsn:
        figures = {"intake": intake(dsn, n, hook)}
        figures["upload"] = _child("upload", dsn, sim)
        batches = {int(k): v for k, v in figures["upload"].pop("batches").items()}
        for batch_id, remote_id in batches.items():
            _finish_at_openai(dsn, sim, batch_id, remote_id)
        ids = ",".join(str(b) for b in sorted(batches))
        figures["results"] = _child("results", dsn, sim, ids)
        stored = figures["results"].pop("stored")
        assert stored == n, (stored, n, figures)
        figures["delivery"] = _child("delivery", dsn, ids)
        assert figures["delivery"].pop("delivered") == n
    return figures


def main() -> None:
    results: dict[int, dict[str, dict]] = {}
    with postgres_server() as server_url, receiver() as hook:
        for n in _SIZES:
            print(f"  {n:,} requests ...", flush=True)
            # A simulator of its own for each size: batch ids start again at 1 in a fresh database, and
            # the upload would adopt the input file a previous size left (it finds files by batch id).
            with tempfile.TemporaryDirectory() as tmp, simulator(Path(tmp)) as sim:
                results[n] = run_size(server_url, sim, hook, n)
    first = _SIZES[0]
    head = f"vs {first:,}"
    print(
        f"  {'stage':<9} {'requests':>9} {'seconds':>8} {'us/req':>8} {head:>9}"
        f" {'CPU s':>7} {'CPU us/req':>10} {head:>9} {'peak RSS':>9}"
    )
    for stage in _STAGES:
        base = results[first][stage]
        for n in _SIZES:
            f = results[n][stage]
            per, cpu_per = f["seconds"] / n, f["cpu"] / n
            print(
                f"  {stage:<9} {n:>9,} {f['seconds']:>8.2f} {per * 1e6:>8.1f}"
                f" {per / (base['seconds'] / first):>8.2f}x {f['cpu']:>7.2f} {cpu_per * 1e6:>10.1f}"
                f" {cpu_per / (base['cpu'] / first):>8.2f}x {f['peak_rss_mb']:>6.0f} MB",
                flush=True,
            )
    print(
        "  targets: per-request cost at the largest size within 1.3x of the smallest; peak RSS < 300 MB."
        "\n  CPU: the stage's own process (the API's for intake), not Postgres's: a check on wall times"
        " measured while other work shares the machine."
    )
    _report(results)


def _report(results: dict[int, dict[str, dict]]) -> None:
    """The targets as figures: each stage's cost per request at the largest size against the smallest
    (ratio largest / smallest, so the target reads "within 1.3x"), and its peak RSS over every size."""
    first, last = _SIZES[0], _SIZES[-1]
    note(f"Sizes {', '.join(f'{n:,}' for n in _SIZES)} (BENCH_LINEAR_SIZES); CPU is the stage's own process.")
    for stage in _STAGES:
        small, large = results[first][stage], results[last][stage]
        for what, key in (("wall", "seconds"), ("CPU", "cpu")):
            report(
                f"{stage}: {what} time per request at {last:,} (baseline: at {first:,})",
                large[key] / last * 1e6,
                "us/req",
                baseline=small[key] / first * 1e6,
                ratio="value/baseline",
                ratio_goal=("<=", 1.3) if what == "wall" else None,
            )
        peak = max(results[n][stage]["peak_rss_mb"] for n in _SIZES)
        report(f"{stage}: peak RSS, largest over the sizes", peak, "MB", goal=("<", 300))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        stage, dsn, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
        if stage == "upload":
            out = child_upload(dsn, rest[0])
        elif stage == "results":
            out = child_results(dsn, rest[0], [int(b) for b in rest[1].split(",")])
        else:
            out = child_delivery(dsn, [int(b) for b in rest[0].split(",")])
        print(json.dumps(out))
    else:
        main()
