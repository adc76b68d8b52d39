"""The stage-by-stage timeline of one request through ``batchman up`` on the simulator.

Starts ``batchman up`` (the simulator; Postgres from TEST_DATABASE_URL / BENCH_DATABASE_URL in a fresh
database, else embedded) on free ports with ``BATCH_MAX_AGE_SECONDS=5``, posts one request whose
webhook is a local receiver, and prints, relative to the POST, when its batch entered each state and,
from the Dagster instance, when each of its runs was requested by a sensor, left the queue, had its
process up (code location imported) and started its op, and when the webhook arrived. Then the
median of each hop over ``ROUNDS`` requests (default 1), and the import time of the code location in
a fresh process (what every run process paid before its op started while the code server spawned
them; it forks them from a process that has the code imported now, ``defs/code_server.py``).
``python -m bench orchestration``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from batch_pipeline.db import dagster_storage_url
from bench.support import fresh_database, postgres_server
from tests.batch_pipeline.test_cli import _batchman, _service_env, _wait_for
from tests.conftest import WebhookReceiver, free_port

ENV = {"BATCH_MAX_AGE_SECONDS": "5", "OPENAI_MODE": "simulator"}
# Run events, in the order a run goes through them: (label, Dagster event type).
_RUN_PHASES = (
    ("launched", "RUN_STARTING"),
    ("process up", "RUN_START"),
    ("op started", "STEP_START"),
    ("finished", "RUN_SUCCESS"),
)


def _run_events(instance, batch_id: int) -> list[tuple[float, str]]:
    """(time, what) for every run of the batch: requested (created), then its phases."""
    import dagster as dg

    out = []
    for run in instance.get_runs(filters=dg.RunsFilter(tags={"batch_id": str(batch_id)})):
        record = instance.get_run_record_by_id(run.run_id)
        out.append((record.create_timestamp.timestamp(), f"{run.job_name}: requested by its sensor"))
        seen = set()
        for entry in instance.all_logs(run.run_id):
            kind = entry.dagster_event_type.name if entry.dagster_event_type else None
            for label, event in _RUN_PHASES:
                if kind == event and label not in seen:
                    seen.add(label)
                    out.append((entry.timestamp, f"{run.job_name}: {label}"))
    return out


def one_request(client: httpx.Client, receiver: WebhookReceiver, instance, n: int) -> dict[str, float]:
    custom_id = f"bench-orch-{n}-{time.time_ns()}"
    body = {
        "custom_id": custom_id,
        "url": "/v1/chat/completions",
        "method": "POST",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        "delivery_config": {"type": "webhook", "webhook_url": receiver.url},
    }
    posted = time.time()
    assert client.post("/api/requests", json=body).status_code == 202
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(b["custom_id"] == custom_id for _, b in receiver.received):
        time.sleep(0.05)
    arrived = time.time() - posted
    batch_id = client.get(f"/api/requests/{custom_id}").json()["batch_id"]
    batch = client.get(f"/api/batches/{batch_id}").json()
    time.sleep(1.5)  # the run that delivered is marked finished a moment after its op
    events = [
        (datetime.fromisoformat(t["transitioned_at"]).timestamp(), f"batch → {t['to_state']}")
        for t in batch.get("transitions", [])
    ]
    events += _run_events(instance, batch_id)
    events.append((posted + arrived, "webhook received"))
    print(f"request {n}: webhook after {arrived:.1f} s (batch {batch_id})")
    at = {}
    for ts, what in sorted(events):
        print(f"  {ts - posted:6.1f} s  {what}")
        at.setdefault(what, ts - posted)
    return {"webhook": arrived, **at}


# Hops reported as medians: (label, from event, to event).
_HOPS = (
    ("POST → batch opened (age 5 s + batching tick)", None, "batch → ready"),
    ("opened → upload run requested", "batch → ready", "upload_job: requested by its sensor"),
    (
        "upload run: requested → launched (queue)",
        "upload_job: requested by its sensor",
        "upload_job: launched",
    ),
    ("upload run: launched → process up", "upload_job: launched", "upload_job: process up"),
    ("upload run: process up → op started", "upload_job: process up", "upload_job: op started"),
    ("op started → at OpenAI", "upload_job: op started", "batch → openai_processing"),
    ("at OpenAI → status check sees it done", "batch → openai_processing", "batch → openai_completed"),
    ("seen done → results run requested", "batch → openai_completed", "results_job: requested by its sensor"),
    (
        "results run: requested → launched (queue)",
        "results_job: requested by its sensor",
        "results_job: launched",
    ),
    ("results run: launched → process up", "results_job: launched", "results_job: process up"),
    ("results run: process up → op started", "results_job: process up", "results_job: op started"),
    ("seen done → delivering (target ≤ 5 s)", "batch → openai_completed", "batch → delivering"),
    ("delivering → webhook received", "batch → delivering", "webhook received"),
)


def _summary(rounds: list[dict[str, float]]) -> None:
    print(f"\nmedians over {len(rounds)} request(s):")
    for label, start, end in _HOPS:
        gaps = [
            r[end] - (r[start] if start else 0.0) for r in rounds if end in r and (not start or start in r)
        ]
        if gaps:
            print(
                f"  {label:<52} {statistics.median(gaps):6.1f} s  (min {min(gaps):.1f}, max {max(gaps):.1f})"
            )
    median = statistics.median(r["webhook"] for r in rounds)
    print(f"  {'request → webhook':<52} {median:6.1f} s  (target ≤ 20 s)")


def import_seconds(tries: int = 3) -> float:
    """Wall time of ``import batch_pipeline.defs.definitions`` in a fresh interpreter (median)."""
    times = []
    for _ in range(tries):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import batch_pipeline.defs.definitions"], check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


@contextlib.contextmanager
def _database():
    with postgres_server() as server, fresh_database(server) as url:
        yield url


def main() -> None:
    import dagster as dg

    rounds = int(os.environ.get("ROUNDS", "1"))
    print(f"code location import in a fresh process: {import_seconds():.2f} s (median of 3)")
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp, _database() as db_url:
        cwd = Path(tmp)
        ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
        env = _service_env(ports, cwd / "data", db_url) | ENV
        proc = _batchman(["up", "--host", "127.0.0.1"], env, cwd)
        receiver = WebhookReceiver()
        try:
            api = f"http://127.0.0.1:{ports['PORT']}"
            _wait_for(f"{api}/health/ready", proc, cwd / "batchman.log", timeout=240)
            os.environ["DAGSTER_HOME"] = str(cwd / "data" / "dagster_home")
            os.environ["DAGSTER_PG_URL"] = dagster_storage_url(db_url)
            with dg.DagsterInstance.get() as instance, httpx.Client(base_url=api, timeout=30) as client:
                results = [one_request(client, receiver, instance, n) for n in range(rounds)]
            _summary(results)
        finally:
            receiver.close()
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
