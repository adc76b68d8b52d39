"""The real thing: a ``dagster-daemon`` on a Postgres-backed instance (the repo's own dagster.yaml),
loading the definitions from our code server as ``batchman up`` starts them, ticks our sensors (every
second, not Dagster's 5 s loop), queues and launches the upload and results runs in processes forked
by the code server, and records them in Postgres, while the simulator plays OpenAI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from batch_pipeline.db import dagster_storage_url
from batch_pipeline.intake.validation import Limits, validate_request
from batch_pipeline.runtime.dagster_processes import code_server_argv, daemon_argv, socket_workspace
from batch_pipeline.runtime.supervisor import wait_for_socket
from batch_pipeline.simulator.testing import ThreadedServer
from batch_pipeline.store.request_inserts import COPY_COLUMNS, copy_row

# Real processes: left out of `make test-fast`.
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[3]
DONE = ("ready_to_deliver", "delivering", "delivered", "partially_delivered", "delivery_failed")


@pytest.fixture
def daemon(tmp_path: Path, db_url: str, live_sim: ThreadedServer):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_storage_url(db_url),
        "DATABASE_URL": db_url,
        "OPENAI_BASE_URL": live_sim.base_url,
        "OPENAI_API_KEY": "sk-daemon-test",
        "DATA_DIR": str(tmp_path / "data"),
        "SENSOR_INTERVAL_SECONDS": "1",
        "OPENAI_POLL_INTERVAL_SECONDS": "1",
        "BATCH_MAX_AGE_SECONDS": "0",
    }
    # As `batchman up` runs them: our code server on a socket, and the daemon loading it from there.
    socket = Path(tempfile.mkdtemp(prefix="batchman-test-")) / "code.sock"
    workspace = home / "workspace.yaml"
    workspace.write_text(socket_workspace(socket))
    log = (tmp_path / "daemon.log").open("w")
    procs = []
    for argv in (code_server_argv(socket=socket), daemon_argv(workspace)):
        procs.append(
            subprocess.Popen(
                argv,
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its run workers go down with it
            )
        )
        if len(procs) == 1:
            wait_for_socket(procs[0], socket, 120)
    yield home, env
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    shutil.rmtree(socket.parent, ignore_errors=True)


def _queue_request(db_url: str) -> None:
    request = validate_request(
        {
            "custom_id": "through-the-daemon",
            "url": "/v1/chat/completions",
            "method": "POST",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            "delivery_config": {"type": "webhook", "webhook_url": "http://127.0.0.1:9/unused"},
        },
        Limits(),
    )
    with (
        psycopg.connect(db_url) as conn,
        conn.cursor().copy(f"COPY batchman.requests {COPY_COLUMNS} FROM STDIN") as cp,
    ):
        cp.write_row(copy_row(request))


def test_daemon_runs_the_pipeline_on_a_postgres_instance(
    daemon, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, env = daemon
    _queue_request(db_url)

    deadline = time.monotonic() + 240  # daemon start, code server, two run processes on 2 cores
    state = None
    while time.monotonic() < deadline:
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT id, state FROM batchman.batches").fetchone()
        state = row and row[1]
        if state in DONE:
            break
        time.sleep(1)
    daemon_log = (tmp_path / "daemon.log").read_text()
    assert state in DONE, f"batch state {state!r}; daemon log:\n{daemon_log[-4000:]}"

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.get() as instance:
        # The batch moves on when a run's op commits; the run itself is marked finished a moment later.
        stages = ("upload_job", "results_job")
        while True:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"batch_id": str(row[0])}))
            by_job = {r.job_name: r for r in reversed(runs)}  # the newest run of each job
            finished = all(j in by_job and by_job[j].is_finished for j in stages)
            if finished or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        statuses = {j: by_job[j].status for j in stages if j in by_job}
        assert statuses == dict.fromkeys(stages, dg.DagsterRunStatus.SUCCESS), daemon_log[-4000:]
        # Each run is one partition of the batches, as the Dagster UI lists them.
        assert by_job["upload_job"].tags["dagster/partition"] == str(row[0])
        assert str(row[0]) in instance.get_dynamic_partitions("batches")
        # The results run began the batch's delivery itself, without waiting for a delivery run.
        with psycopg.connect(db_url) as conn:
            reasons = [r for (r,) in conn.execute(TO_DELIVERING, (row[0],))]
        assert reasons and reasons[0] == f"results run {by_job['results_job'].run_id}", reasons


TO_DELIVERING = """
SELECT reason FROM batchman.batch_transitions WHERE batch_id = %s AND to_state = 'delivering' ORDER BY id
"""
