"""``make bench-e2e`` (``python -m bench soak_e2e``): 200,000 requests (``SOAK_REQUESTS``) through the
processes ``make up`` starts, on the simulator without faults: four bulk calls, one fast local webhook
receiver. Prints stage by stage where the time goes (waiting for the batch age, run starts, OpenAI,
results, delivery) and what overlaps (first delivery against the last upload), and checks that every
request was delivered exactly once. Target: all delivered <= 90 s after the last accept (issue 17).
"""

from __future__ import annotations

import os
import signal
import sys

E2E_TARGET_SECONDS = 90.0


def main() -> None:
    from bench.soak.plan import Plan
    from bench.soak.report import check, save, show
    from bench.soak.run import run

    # A stop (timeout, kill) unwinds the harness, so `batchman up`, the sinks and the database go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    total = int(os.environ.get("SOAK_REQUESTS", "200000"))
    # Every request through the bulk door, in four calls; all to the webhook receiver.
    plan = Plan(
        total=total,
        faults=False,
        single_share=0.0,
        rabbit_share=0.0,
        bulk_call_items=-(-total // 4),
        half_to_queue=False,
    )
    print(f"bench-e2e: {plan.total:,} requests in 4 bulk calls, no faults, through batchman up", flush=True)
    outcome = run(plan, timeout=float(os.environ.get("SOAK_WAIT_SECONDS", "1800")))
    save(outcome)
    show(outcome, E2E_TARGET_SECONDS)
    problems = check(outcome, exactly_once=True)
    for problem in problems:
        print(f"FAILED: {problem}", flush=True)
    if problems:
        sys.exit(1)
    print("bench-e2e: every request delivered exactly once", flush=True)


if __name__ == "__main__":
    main()
