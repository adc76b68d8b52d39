"""Pipeline throughput, each against a baseline measured in the same run (``python -m bench pipeline``).

- Upload: a 50,000-request batch built from Postgres and uploaded to the simulator by
  ``submit_batch`` (in its own process, so its peak RSS is its own) vs a bare ``COPY … TO`` into a
  file plus the same two SDK calls. Targets: < 10 s and >= 0.7 of the baseline, peak RSS < 300 MB.
- Results: the 50,000-line output file of that batch ingested by ``ingest_results`` (download,
  classify, COPY into staging, set-based UPDATEs) vs downloading the same file and a raw COPY of its
  lines into a table (and, as a floor, into an unlogged one). Targets: < 10 s, >= 0.5 of raw COPY.
- Batching sensor tick with 1,000,000 queued requests: nothing due (40,000 per group in 25 groups),
  and every group full (the tick cuts its maximum of batches), vs an index-only count of the queued
  rows. Target: < 1 s. The sensor only opens batches; filling one (assigning its 50,000 rows) is the
  upload run's first step and is reported with the upload figures.
Needs a Postgres (see bench.support); starts its own simulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import psycopg

from batch_pipeline.db import connect as db_connect
from batch_pipeline.intake.validation import Limits, validate_request
from batch_pipeline.store.batching import BatchLimits, cut_batch
from batch_pipeline.store.request_inserts import COPY_COLUMNS, copy_row
from bench.intake import make_request
from bench.support import free_port, fresh_database, postgres_server, report

BATCH = 50_000
QUEUED = 1_000_000
GROUPS = 25
TICKS = 5
ENDPOINT, MODEL = "/v1/chat/completions", "gpt-4o-mini"
UNLIMITED = 10**12


@contextlib.contextmanager
def simulator(tmp: Path) -> Iterator[str]:
    """The simulator in its own process, with a frozen clock: batches finish when told to."""
    port = free_port()
    env = {
        **os.environ,
        "SIMULATOR_DATA_DIR": str(tmp),
        "SIMULATOR_FREEZE_CLOCK": "true",
        "SIMULATOR_LOG_LEVEL": "warning",
        "SIMULATOR_TOKEN_LIMITS": "",
    }
    argv = [sys.executable, "-m", "batch_pipeline.simulator", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/_sim/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("simulator did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sdk(sim: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim}/v1", api_key="sk-bench", max_retries=0, timeout=300)


def connector(dsn: str):  # -> the Connect callable the core functions take
    return lambda: db_connect(dsn)


def store_requests(dsn: str, count: int, prefix: str) -> None:
    rows = [validate_request(make_request(i, prefix), Limits()) for i in range(count)]
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor().copy(f"COPY batchman.requests {COPY_COLUMNS} FROM STDIN") as cp,
    ):
        for r in rows:
            cp.write_row(copy_row(r))  # type: ignore[arg-type]


def cut(dsn: str) -> int:
    limits = BatchLimits(max_requests=BATCH, max_bytes=199_000_000, max_age_seconds=0)
    with db_connect(dsn) as conn:
        row = cut_batch(conn, ENDPOINT, MODEL, limits, UNLIMITED, "bench")
    assert row is not None and row["request_count"] == BATCH, row
    return row["id"]


# --- upload -----------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_upload(mode: str, dsn: str, sim: str, batch_id: int) -> None:
    """Runs in its own process; prints {"seconds", "peak_rss_mb", "openai_batch_id"}."""
    client = sdk(sim)
    start = time.perf_counter()
    if mode == "ours":
        from batch_pipeline.stages.upload import submit_batch

        result = submit_batch(connector(dsn), client, batch_id, lambda _model: UNLIMITED, 0)
        assert result.outcome == "submitted", result
        remote_id = result.openai_batch_id
    else:
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn) as conn:
            path = Path(tmp) / "baseline.jsonl"
            query = "COPY (SELECT payload FROM batchman.requests WHERE batch_id = %s ORDER BY id) TO STDOUT"
            with path.open("wb") as out, conn.cursor().copy(query, (batch_id,)) as cp:
                for chunk in cp:
                    out.write(chunk)
            with path.open("rb") as fh:
                uploaded = client.files.create(file=("baseline.jsonl", fh), purpose="batch")
            remote_id = client.batches.create(
                input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
            ).id
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "openai_batch_id": remote_id}))


def run_child(mode: str, dsn: str, sim: str, batch_id: int) -> dict:
    argv = [sys.executable, "-m", "bench.pipeline", "upload", mode, dsn, sim, str(batch_id)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_upload(dsn: str, sim: str) -> tuple[int, str]:
    print(f"upload: build and upload one {BATCH:,}-request batch to the simulator")
    store_requests(dsn, BATCH, "base")
    base = run_child("baseline", dsn, sim, cut(dsn))
    store_requests(dsn, BATCH, "ours")
    start = time.perf_counter()
    batch_id = cut(dsn)
    fill = time.perf_counter() - start
    ours = run_child("ours", dsn, sim, batch_id)
    report("ours: fill a batch (assign 50,000 requests; the run's first step)", fill, "s")
    report("baseline: COPY TO file + files.create + batches.create", base["seconds"], "s")
    report("baseline: peak RSS", base["peak_rss_mb"], "MB")
    upload = "ours: submit_batch (stream JSONL, upload, create)"
    report(upload, ours["seconds"], "s", baseline=base["seconds"], goal=("<", 10), ratio_goal=(">=", 0.7))
    rss = "ours: peak RSS of the uploading process"
    report(rss, ours["peak_rss_mb"], "MB", baseline=base["peak_rss_mb"], goal=("<", 300))
    return batch_id, ours["openai_batch_id"]


# --- results ----------------------------------------------------------------------------------


def _finish_at_openai(dsn: str, sim: str, batch_id: int, openai_batch_id: str) -> str:
    """Complete the batch at the simulator and record it, as the status sensor would."""
    from batch_pipeline.stages.status import PollSettings, apply_status

    httpx.post(f"{sim}/_sim/batches/{openai_batch_id}/complete", timeout=300).raise_for_status()
    remote = sdk(sim).batches.retrieve(openai_batch_id)
    assert remote.status == "completed" and remote.output_file_id, remote
    with db_connect(dsn) as conn:
        assert apply_status(conn, batch_id, remote, PollSettings(60, (5.0,))) == "results"
        conn.commit()
    return remote.output_file_id


def _raw_copy_seconds(dsn: str, sim: str, file_id: str, table: str) -> float:
    """Download the file and COPY (custom_id, line) of each line into ``table``, nothing else."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn) as conn:
        path = Path(tmp) / "out.jsonl"
        sdk(sim).files.content(file_id).write_to_file(path)
        with path.open("rb") as fh, conn.cursor().copy(f"COPY {table} FROM STDIN") as cp:
            for raw in fh:
                cp.write_row((orjson.loads(raw)["custom_id"], raw.decode().rstrip("\n")))
        conn.commit()
    return time.perf_counter() - start


def bench_results(dsn: str, sim: str, batch_id: int, openai_batch_id: str) -> None:
    from batch_pipeline.stages.results import ingest_results

    print(f"results: ingest the {BATCH:,}-line output file of that batch")
    file_id = _finish_at_openai(dsn, sim, batch_id, openai_batch_id)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_lines (custom_id text, line jsonb)")
        conn.execute("CREATE UNLOGGED TABLE raw_lines_unlogged (custom_id text, line jsonb)")
    # A durable table is the like-for-like reference (results must survive a crash); the unlogged
    # one (no WAL, as a temp table) is shown as the floor.
    baseline = min(_raw_copy_seconds(dsn, sim, file_id, "raw_lines") for _ in range(2))
    unlogged = min(_raw_copy_seconds(dsn, sim, file_id, "raw_lines_unlogged") for _ in range(2))

    start = time.perf_counter()
    summary = ingest_results(connector(dsn), sdk(sim), batch_id, max_resubmits=3)
    ours = time.perf_counter() - start
    assert summary.get("processed") == BATCH, summary
    report("baseline: download + raw COPY into a table", BATCH / baseline, "lines/s")
    report("floor: download + raw COPY into an unlogged table", BATCH / unlogged, "lines/s")
    ingest = "ours: ingest_results (COPY to staging + UPDATE requests)"
    report(ingest, BATCH / ours, "lines/s", baseline=BATCH / baseline, ratio_goal=(">=", 0.5))
    report("ours, against the unlogged floor", BATCH / ours, "lines/s", baseline=BATCH / unlogged)
    report("ours: wall time", ours, "s", goal=("<", 10))


# --- batching sensor tick ---------------------------------------------------------------------

# 1,000,000 queued requests shaped like real ones (payload size, token estimate), in GROUPS models.
FILL_QUEUE = """
INSERT INTO batchman.requests
    (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config, input_count)
SELECT 'q-' || g, '/v1/chat/completions', 'gpt-5-mini-' || (g %% %(groups)s), p.line, length(p.line), 120,
       '{"type": "webhook", "webhook_url": "https://hooks.example.com/r"}'::jsonb, 1
FROM generate_series(1, %(count)s) g,
     LATERAL (SELECT '{"custom_id":"q-' || g || '","method":"POST","url":"/v1/chat/completions",'
                     '"body":{"model":"m","messages":[{"role":"user","content":"'
                     || repeat('x', 300) || '"}]}}' AS line) p
"""


def _tick_seconds(dsn: str, undo_cuts: bool = False) -> float:
    """Median wall time of a batching-sensor evaluation, Dagster context included."""
    import dagster as dg

    from batch_pipeline.config import load_settings
    from batch_pipeline.defs.definitions import build_definitions

    settings = load_settings(
        _env_file=None,
        database_url=dsn,
        openai_api_key=None,
        data_dir=tempfile.gettempdir(),
        batch_max_age_seconds=3600,  # the simulator-mode default (10 s) would make every group stale
    )
    defs = build_definitions(settings, dsn)
    sensor = defs.get_sensor_def("batching_sensor")
    times = []
    with dg.DagsterInstance.ephemeral() as instance, psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(TICKS):
            with dg.build_sensor_context(instance=instance, resources=defs.resources) as context:
                start = time.perf_counter()
                sensor(context)
                times.append(time.perf_counter() - start)
            if undo_cuts:  # back to the same queue for the next tick
                conn.execute("DELETE FROM batchman.batches")
    return statistics.median(times)


def bench_sensor(server_url: str) -> None:
    print(f"batching sensor tick with {QUEUED:,} queued requests (median of {TICKS})")
    with fresh_database(server_url) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL_QUEUE, {"groups": GROUPS, "count": QUEUED})
            conn.execute("VACUUM ANALYZE batchman.requests")
            counts = []
            for _ in range(TICKS):
                start = time.perf_counter()
                conn.execute(
                    "SELECT count(*) FROM batchman.requests WHERE state = 'pending' AND batch_id IS NULL"
                ).fetchone()
                counts.append(time.perf_counter() - start)
        idle = _tick_seconds(dsn)
        # Every group over the 50,000 mark: a tick opens a batch for each (then undone).
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(FILL_QUEUE.replace("'q-'", "'r-'"), {"groups": GROUPS, "count": 250_000 + GROUPS})
            conn.execute("VACUUM ANALYZE batchman.requests")
        busy = _tick_seconds(dsn, undo_cuts=True)
    baseline = statistics.median(counts)
    report("baseline: index-only count of the queued rows", baseline, "s")
    report("ours: tick, nothing due (25 groups of 40,000)", idle, "s", baseline=baseline, goal=("<", 1))
    report("ours: tick, all 25 groups full (opens 25 batches)", busy, "s", goal=("<", 1))


def main() -> None:
    with postgres_server() as server_url, tempfile.TemporaryDirectory() as tmp:
        with simulator(Path(tmp)) as sim, fresh_database(server_url) as dsn:
            batch_id, openai_batch_id = bench_upload(dsn, sim)
            bench_results(dsn, sim, batch_id, openai_batch_id)
        bench_sensor(server_url)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "upload":
        child_upload(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
