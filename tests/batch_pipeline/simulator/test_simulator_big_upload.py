"""A ~200 MB upload streams through the simulator: its peak memory stays far below the file size.

The server runs in a subprocess (``python -m batch_pipeline.simulator``) so its peak RSS (VmHWM) can be
measured on its own, without the test process's memory in the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

# 199,950,000 bytes, just under the 200,000,000-byte limit; few long lines keep the test quick.
LINES, LINE_BYTES = 10_000, 19_995
HEADROOM_KB = 150 * 1024
AUTH = {"Authorization": "Bearer sk-test"}

# A real simulator process (left out of `make test-fast`), measured through Linux /proc.
pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM"),
]


def _write_input(path: Path) -> int:
    with open(path, "wb") as out:
        for i in range(LINES):
            head = {"custom_id": f"r{i:06d}", "method": "POST", "url": "/v1/chat/completions"}
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}
            line = json.dumps({**head, "body": body})
            padding = "x" * (LINE_BYTES - 1 - len(line))
            out.write(line.replace('"content": ""', f'"content": "{padding}"').encode() + b"\n")
    return path.stat().st_size


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("VmHWM missing from /proc status")


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULATOR_")}
    env.update(
        SIMULATOR_DATA_DIR=str(tmp_path / "data"), SIMULATOR_LOG_LEVEL="warning", SIMULATOR_FREEZE_CLOCK="1"
    )
    log = tmp_path / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "batch_pipeline.simulator", "--port", str(port)],
            cwd=tmp_path,  # away from any .env in the repository
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/_sim/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "simulator subprocess did not start"
            time.sleep(0.05)
        yield process, url, log
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_200mb_upload_and_results_stream_through_bounded_memory(
    tmp_path: Path, simulator_process: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, url, log = simulator_process
    big = tmp_path / "big.jsonl"
    size = _write_input(big)
    assert size == LINES * LINE_BYTES
    baseline = _peak_rss_kb(process.pid)

    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
        with open(big, "rb") as handle:  # httpx streams a file object in 64 KB pieces
            uploaded = http.post(
                "/v1/files", files={"file": ("big.jsonl", handle)}, data={"purpose": "batch"}
            )
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
        assert uploaded.json()["bytes"] == size

        with http.stream("GET", f"/v1/files/{file_id}/content") as response:
            assert response.status_code == 200
            assert sum(len(chunk) for chunk in response.iter_bytes()) == size

        created = http.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        assert created.status_code == 200, created.text
        finished = http.post(f"/_sim/batches/{created.json()['id']}/complete").json()
        assert finished["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        output = http.get(f"/v1/files/{finished['output_file_id']}").json()
        assert output["bytes"] > 0

    peak = _peak_rss_kb(process.pid)
    assert peak - baseline < HEADROOM_KB, (
        f"server peak RSS grew by {(peak - baseline) // 1024} MB for a 200 MB file"
    )
    assert "no real OpenAI calls are made" in log.read_text()
