"""``batchman up`` for real: with no OPENAI_API_KEY it starts the simulator (and says so), the API,
the Dagster webserver and daemon; Ctrl-C stops every one of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

BATCHMAN = Path(sys.executable).with_name("batchman")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"batchman up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).raise_for_status()
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def test_up_starts_everything_on_the_simulator_and_ctrl_c_stops_it(db_url: str, tmp_path: Path) -> None:
    ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY" and not k.startswith("RABBITMQ")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"DATABASE_URL": db_url, "DATA_DIR": str(tmp_path / "data")})
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BATCHMAN), "up", "--host", "127.0.0.1"],
            env=env,
            cwd=tmp_path,  # no .env of the developer's is read
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        health = _wait_for(f"http://127.0.0.1:{ports['PORT']}/health", proc, log).json()
        assert health["simulator"] is True
        sim = _wait_for(f"http://127.0.0.1:{ports['SIMULATOR_PORT']}/_sim/health", proc, log).json()
        assert sim["simulator"] is True
        _wait_for(f"http://127.0.0.1:{ports['DAGSTER_PORT']}/server_info", proc, log)
        assert "SIMULATOR" in log.read_text()  # the loud banner

        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Every process is gone: nothing answers on any of the ports any more.
    for port in ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
