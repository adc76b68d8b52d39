"""``make soak`` (``python -m bench soak``): the whole stack as ``make up`` starts it, under load and faults.

200,000 requests (``SOAK_REQUESTS``) across three models on three endpoints (chat, responses,
embeddings), through bulk POSTs, single POSTs and the RabbitMQ intake at once; half the results go to a
fast local webhook receiver and half to a RabbitMQ queue, both counted per custom_id (``sinks``). The
simulator finishes batches at once and injects faults (``plan.FAULTS``): 429s and 500s on 10% of API
calls (half each), dropped connections, a lost upload and create answer, one batch expired with partial
results, one batch failed at validation, 1% per-line server_errors. Asserts: nothing acknowledged is
lost, nothing is created twice at OpenAI, every result reaches its destination, every delivery beyond
one per request is explained by the attempts the database recorded. Prints wall time, throughput per
stage, where the time goes, peak RSS per process and Postgres size per 100k requests.

The stack's database is a fresh one on the Postgres of ``BENCH_DATABASE_URL``/``TEST_DATABASE_URL``
(an embedded server when neither is set): no initdb in the measured run, and the size of our own
database is exact. ``SOAK_WAIT_SECONDS`` (default 1800) bounds the wait for the last delivery after the
load is sent. ``bench.soak_e2e`` is the same harness without faults (``make bench-e2e``).
"""

from __future__ import annotations

import os
import signal
import sys

SOAK_TARGET_SECONDS = 180.0


def main() -> None:
    from bench.soak.plan import Plan
    from bench.soak.report import check, save, show
    from bench.soak.run import run

    # A stop (timeout, kill) unwinds the harness, so `batchman up`, the sinks and the database go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    plan = Plan(total=int(os.environ.get("SOAK_REQUESTS", "200000")), faults=True)
    print(f"soak: {plan.total:,} requests, faults on, through batchman up", flush=True)
    outcome = run(plan, timeout=float(os.environ.get("SOAK_WAIT_SECONDS", "1800")))
    save(outcome)
    show(outcome, SOAK_TARGET_SECONDS)
    problems = check(outcome, exactly_once=False)
    for problem in problems:
        print(f"FAILED: {problem}", flush=True)
    if problems:
        sys.exit(1)
    print("soak: every promise kept", flush=True)
