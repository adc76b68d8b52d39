"""LOG_FORMAT=json in every process, for real: the gRPC code server with the run workers it forks, the
Dagster daemon that launches them, the webserver and the simulator, each started as
``batchman <role>``; every line each writes is one JSON object with our keys, and no secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from batch_pipeline.observability.relay import to_json_line
from batch_pipeline.runtime import dagster_processes as dp
from batch_pipeline.simulator.testing import ThreadedServer
from tests.batch_pipeline.defs.test_daemon import _queue_request
from tests.conftest import free_port

pytestmark = pytest.mark.process

BATCHMAN = Path(sys.executable).with_name("batchman")
OPENAI_KEY = "sk-json-logs-test-0123456789"
KEYS = {"time", "level", "logger", "message"}


def base_env(tmp_path: Path, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "OPENAI", "DAGSTER", "LOG_"))}
    env.update(DATABASE_URL=db_url, DATA_DIR=str(tmp_path / "data"), LOG_FORMAT="json", **extra)
    return env


@contextmanager
def role(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``batchman <args>`` with stdout and stderr in a file; stopped (SIGTERM, its group) at the end."""
    log = tmp_path / f"{args[0]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BATCHMAN), *args], env=env, cwd=tmp_path, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(0.5)  # the relay writes the last lines once the program is gone
        with suppress(ProcessLookupError):  # a run worker still stopping, the relay: not past the test
            os.killpg(proc.pid, signal.SIGKILL)


def json_lines(log: Path) -> list[dict]:
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no output"
    parsed = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{text[-3000:]}")
        assert isinstance(obj, dict) and obj.keys() >= KEYS, line
        parsed.append(obj)
    assert OPENAI_KEY not in text
    return parsed


def wait_for(check, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"not ready in {seconds} s:\n{log.read_text()[-3000:]}")


def test_the_code_server_its_run_workers_and_the_daemon_write_json(
    tmp_path: Path, db_url: str, live_sim: ThreadedServer
) -> None:
    env = base_env(
        tmp_path,
        db_url,
        OPENAI_BASE_URL=live_sim.base_url,
        OPENAI_API_KEY=OPENAI_KEY,
        SENSOR_INTERVAL_SECONDS="1",
        OPENAI_POLL_INTERVAL_SECONDS="1",
        BATCH_MAX_AGE_SECONDS="0",
    )
    _queue_request(db_url)
    port = free_port()
    # As Compose runs them: the daemon loads the definitions from the code server over gRPC.
    workspace = tmp_path / "workspace.yaml"
    server = {"host": "127.0.0.1", "port": port, "location_name": dp.LOCATION_NAME}
    workspace.write_text(orjson.dumps({"load_from": [{"grpc_server": server}]}).decode())  # YAML too

    def upload_run_done() -> bool:
        """The upload run finished, and wrote its OpenAI calls (every few seconds, and at its exit)."""
        with psycopg.connect(db_url) as conn:
            sql = "SELECT count(*) FROM batchman.openai_calls WHERE operation = 'batches.create'"
            created = conn.execute(sql).fetchone()[0]
        # The run's step lines come from the run worker (the code server's log), its end from the
        # daemon's run monitoring or the worker: wait for both files.
        steps = "STEP_SUCCESS" in code_log.read_text()
        return created > 0 and steps and "RUN_SUCCESS" in code_log.read_text() + log.read_text()

    with role(tmp_path, env, "dagster-code-server", "--port", str(port)) as (code_proc, code_log):
        wait_for(lambda: "Started Dagster code server" in code_log.read_text(), code_proc, code_log)
        with role(tmp_path, env, "dagster-daemon", "--workspace", str(workspace)) as (proc, log):
            wait_for(upload_run_done, proc, log, seconds=240)  # two processes and a run on 2 cores
    code_lines, lines = json_lines(code_log), json_lines(log)
    assert any(line["message"].startswith("Started Dagster code server") for line in code_lines)
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute("SELECT id FROM batchman.batches").fetchone()[0]
    loggers = {line["logger"] for line in lines}
    assert any(name.startswith("dagster.daemon") for name in loggers), loggers  # the daemon's own
    # The run workers' Dagster events, with the run they belong to.
    events = [line for line in code_lines if "STEP_SUCCESS" in line["message"]]
    assert events and all(line.get("run_id") for line in events), events
    # Python's logging in a run worker (here the SDK's HTTP client) names the run and its batch: the
    # resources set them for the run.
    python = [line for line in code_lines if not line["logger"].startswith("dagster") and line.get("run_id")]
    assert any(line.get("batch_id") == str(batch_id) for line in python), code_lines[-20:]
    # And the run workers, forked by the code server, wrote their OpenAI calls as they ended
    # (openai_calls, for /metrics): atexit does not run in a forked worker.
    with psycopg.connect(db_url) as conn:
        operations = {
            r[0] for r in conn.execute("SELECT operation FROM batchman.openai_calls WHERE calls > 0")
        }
    assert {"files.create", "batches.create"} <= operations, operations


def test_the_webserver_writes_json(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    env = base_env(tmp_path, db_url, OPENAI_API_KEY=OPENAI_KEY)
    with role(tmp_path, env, "dagster-webserver", "--host", "127.0.0.1", "--port", str(port)) as (proc, log):
        url = f"http://127.0.0.1:{port}{dp.WEBSERVER_PATH_PREFIX}/server_info"
        wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, proc, log)
    lines = json_lines(log)
    assert any(line["logger"].startswith("dagster") for line in lines), lines


def test_the_simulator_writes_json(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    env = base_env(tmp_path, db_url, SIMULATOR_DATA_DIR=str(tmp_path / "sim"))
    with role(tmp_path, env, "simulator", "--port", str(port)) as (proc, log):
        url = f"http://127.0.0.1:{port}/v1/batches"
        auth = {"authorization": "Bearer sk-any"}  # the simulator takes any key, but wants one
        wait_for(lambda: httpx.get(url, headers=auth, timeout=2).status_code == 200, proc, log)
        time.sleep(0.3)
    lines = json_lines(log)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("/v1/batches" in line["message"] for line in access), lines


def test_text_keeps_the_dagster_command_lines_as_they_were() -> None:
    workspace = Path("workspace.yaml")
    assert dp.webserver_argv("h", 1, workspace)[0] == dp.dagster_bin("dagster-webserver")
    assert "--log-format" not in dp.code_server_argv("h", 1)
    relayed = dp.daemon_argv(workspace, "json")
    assert relayed[1:4] == ["-m", "batch_pipeline.observability.relay", "dagster-daemon"]
    assert relayed[-2:] == ["--log-format", "json"]


def test_relay_turns_each_kind_of_line_into_ours() -> None:
    def scrub(text: str) -> str:
        return text.replace("s3cret", "***")

    ours = '{"time":"2026-01-01T00:00:00.000+00:00","level":"info","logger":"x","message":"m"}'
    assert to_json_line(ours + "\n", "n", scrub) == ours
    dagster_json = orjson.dumps(
        {
            "event": "tick s3cret",
            "logger": "dagster.daemon.SensorDaemon",
            "level": "INFO",
            "timestamp": "2026-01-01T00:00:00Z",
            "run_id": "r-1",
        }
    ).decode()
    assert orjson.loads(to_json_line(dagster_json, "n", scrub)) == {
        "time": "2026-01-01T00:00:00Z",
        "level": "info",
        "logger": "dagster.daemon.SensorDaemon",
        "message": "tick ***",
        "run_id": "r-1",
    }
    run = "0b2a6a52-1c3e-4a57-9d7e-5f1e2b3c4d5e"
    console = (
        f"2026-12-03 13:54:59 +0000 - dagster - DEBUG - upload_job - {run} - 7434 - STEP_START - Started"
    )
    line = orjson.loads(to_json_line(console, "n", scrub))
    assert line == {
        "time": "2026-12-03T13:54:59.000+00:00",
        "level": "debug",
        "logger": "dagster",
        "message": f"upload_job - {run} - 7434 - STEP_START - Started",
        "run_id": run,
    }
    bare = orjson.loads(to_json_line("Traceback (most recent call last): s3cret", "dagster-daemon", scrub))
    assert (bare["logger"], bare["level"], bare["message"]) == (
        "dagster-daemon",
        "info",
        "Traceback (most recent call last): ***",
    )
