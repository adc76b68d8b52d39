"""The stage-by-stage timeline of one request through ``batchman up`` on the simulator.

Starts ``batchman up`` (embedded Postgres, simulator) on free ports with ``BATCH_MAX_AGE_SECONDS=5``,
posts one request whose webhook is a local receiver, and prints, relative to the POST, when its batch
entered each state (from GET /api/batches/{id}) and when the webhook arrived. The gaps between
"results stored" and "delivering", or "ready" and "uploading", are orchestration: sensor tick, run
queue, run process start. ``python -m bench orchestration`` (ROUNDS=n for more than one request).
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.batch_pipeline.test_cli import _batchman, _service_env, _wait_for
from tests.conftest import WebhookReceiver, free_port

ENV = {"BATCH_MAX_AGE_SECONDS": "5", "OPENAI_MODE": "simulator"}


def one_request(client: httpx.Client, receiver: WebhookReceiver, n: int) -> float:
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
        time.sleep(0.2)
    arrived = time.time() - posted
    batch_id = client.get(f"/api/requests/{custom_id}").json()["batch_id"]
    batch = client.get(f"/api/batches/{batch_id}").json()
    print(f"request {n}: webhook after {arrived:.1f} s (batch {batch_id})")
    for t in batch.get("transitions", []):
        at = datetime.fromisoformat(t["transitioned_at"]).timestamp() - posted
        print(f"  {at:6.1f} s  {t['from_state'] or '-':>20} → {t['to_state']}")
    return arrived


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "1"))
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        cwd = Path(tmp)
        ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
        env = _service_env(ports, cwd / "data", None) | ENV
        proc = _batchman(["up", "--host", "127.0.0.1"], env, cwd)
        log = cwd / "batchman.log"
        receiver = WebhookReceiver()
        try:
            api = f"http://127.0.0.1:{ports['PORT']}"
            _wait_for(f"{api}/health/ready", proc, log, timeout=240)
            with httpx.Client(base_url=api, timeout=30) as client:
                times = [one_request(client, receiver, n) for n in range(rounds)]
            print(f"request → webhook: median {statistics.median(times):.1f} s over {rounds}")
        finally:
            receiver.close()
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
