"""``batchman api --workers 2 `` with LOG_FORMAT=json, for real: one JSON object a line from the parent
and both workers, an access line per request carrying its request id, no secret in any line, and
``/metrics`` summing the intake counters of both workers whichever one answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port
from tests.intake_api.conftest import valid_request
from tests.intake_api.test_metrics import sample

pytestmark = pytest.mark.process

BATCHMAN = Path(sys.executable).with_name("batchman")
TOKEN = "tok-0123456789-secret"
DB_PASSWORD = "pw-9876-not-for-logs"


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"batchman api exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def test_two_workers_json_logs_and_summed_counters(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "OPENAI", "DAGSTER"))}
    env.update(
        DATABASE_URL=db_url,
        PORT=str(port),
        LOG_FORMAT="json",
        API_TOKEN=TOKEN,
        # A secret that only appears if something logs the URL it sits in.
        WEBHOOK_SIGNING_SECRET="",
        OPENAI_WEBHOOK_SECRET="whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
    )
    log = tmp_path / "api.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BATCHMAN), "api", "--host", "127.0.0.1", "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        _wait_ready(f"{base}/health", proc, log)
        for i in range(12):  # a new connection each: the kernel spreads them over both workers
            resp = httpx.post(f"{base}/api/requests", json=valid_request(f"w-{i}"), headers=auth)
            assert resp.status_code == 202, resp.text
        httpx.post(f"{base}/api/requests?token=query-secret", json=valid_request("w-0"), headers=auth)
        seen = {
            sample(
                httpx.get(f"{base}/metrics", headers=auth).text,
                "batchman_intake_requests_total",
                route="single",
                outcome="accepted",
                reason="",
            )
            for _ in range(8)
        }
        traced = httpx.get(f"{base}/health", headers={"x-request-id": "trace-me-1"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen == {12.0}, seen  # every scrape, whichever worker, sums both
    assert traced.headers["x-request-id"] == "trace-me-1"

    text = log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, text
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    access = [line for line in lines if line["logger"] == "batchman.access"]
    posts = [a for a in access if a["method"] == "POST"]
    assert len(posts) == 13
    assert {p["status"] for p in posts} == {202, 409}
    assert all(isinstance(a["duration_ms"], float) and len(a["request_id"]) == 32 for a in posts)
    assert {p["path"] for p in posts} == {"/api/requests"}  # never the query string
    mine = [a for a in access if a.get("request_id") == "trace-me-1"]
    assert [(m["path"], m["status"]) for m in mine] == [("/health", 200)]
    assert {line["logger"] for line in lines} >= {"batchman.access", "uvicorn.error"}
    for secret in (TOKEN, "query-secret", "c2VjcmV0LXNlY3JldC1zZWNyZXQ="):
        assert secret not in text
