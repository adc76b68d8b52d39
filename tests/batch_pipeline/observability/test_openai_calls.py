"""OpenAI call figures: counted per operation and outcome in each process, written to the database by a
run process (also at its exit), and exported by ``/metrics`` as one histogram."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import psycopg
import pytest

from batch_pipeline import openai_call_figures as figures
from batch_pipeline import openai_client as oai
from batch_pipeline.simulator.app import create_app
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer
from batch_pipeline.store import metrics as store_metrics
from batch_pipeline.store import openai_calls
from tests.conftest import make_settings
from tests.intake_api.conftest import serve
from tests.intake_api.test_metrics import sample

LINE = (
    b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}}\n'
)
HIST = "batchman_openai_call_seconds"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[ThreadedServer]:
    settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path / "sim"
    )
    server = ThreadedServer(create_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_pipeline.admin import metrics as admin_metrics

    monkeypatch.setattr(admin_metrics, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(admin_metrics, "SETTLE_SECONDS", 0.0)


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/v1/files", "files.list"),
        ("POST", "/v1/files", "files.create"),
        ("GET", "/v1/files/file-abc", "files.retrieve"),
        ("DELETE", "/v1/files/file-abc", "files.delete"),
        ("GET", "/v1/files/file-abc/content", "files.content"),
        ("GET", "/v1/batches", "batches.list"),
        ("POST", "/v1/batches", "batches.create"),
        ("GET", "/v1/batches/batch_abc", "batches.retrieve"),
        ("POST", "/v1/batches/batch_abc/cancel", "batches.cancel"),
        ("GET", "/openai/proxy/v1/batches/batch_abc", "batches.retrieve"),  # a base URL with a path
        ("PATCH", "/v1/batches/batch_abc", "other"),
        ("GET", "/v1/models", "other"),
    ],
)
def test_operations_are_a_few_fixed_names(method: str, path: str, operation: str) -> None:
    assert figures.operation_of(method, path) == operation


def test_outcomes() -> None:
    import httpx2

    assert [figures.outcome_of(s) for s in (200, 204, 400, 404, 429, 500, 503)] == [
        "ok", "ok", "client_error", "client_error", "rate_limited", "server_error", "server_error"
    ]  # fmt: skip
    assert figures.outcome_of(None, httpx2.ReadTimeout("slow")) == "timeout"
    assert figures.outcome_of(None, httpx2.ConnectError("refused")) == "connection_error"
    assert figures.outcome_of(None, ValueError("other")) == "error"


def by_key(rows: list[figures.CallTotals]) -> dict[tuple[str, str], figures.CallTotals]:
    return {(r.operation, r.outcome): r for r in rows}


def test_sync_and_async_clients_count_each_http_call(tmp_path: Path, simulator: ThreadedServer) -> None:
    settings = make_settings(tmp_path, openai_base_url=simulator.base_url)
    # A recorder of its own: an API started by another test flushes the process's RECORDER meanwhile.
    recorder = figures.CallRecorder()
    with oai.sync_client(settings, max_retries=0, recorder=recorder) as client:
        file_id = client.files.create(file=("in.jsonl", LINE), purpose="batch").id
        client.files.list(limit=1)
        client.files.list(limit=1)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")

    async def download() -> bytes:
        async with (
            oai.async_client(settings, max_retries=0, recorder=recorder) as aclient,
            aclient.files.with_streaming_response.content(file_id) as response,
        ):
            return b"".join([chunk async for chunk in response.iter_bytes()])

    assert asyncio.run(download()) == LINE
    rows = by_key(recorder.take())
    assert {k: r.calls for k, r in rows.items()} == {
        ("files.create", "ok"): 1,
        ("files.list", "ok"): 2,
        ("batches.retrieve", "client_error"): 1,
        ("files.content", "ok"): 1,
    }
    for r in rows.values():
        assert sum(r.buckets) == r.calls and 0 < r.seconds < 30
    assert recorder.take() == []  # taken once


def test_a_connection_refused_is_counted_with_every_sdk_retry(tmp_path: Path) -> None:
    from tests.conftest import free_port

    settings = make_settings(tmp_path, openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    recorder = figures.CallRecorder()
    client = oai.sync_client(settings, timeout=2.0, max_retries=1, recorder=recorder)
    with client, pytest.raises(openai.APIConnectionError):
        client.batches.retrieve("batch_x")
    assert {k: r.calls for k, r in by_key(recorder.take()).items()} == {
        ("batches.retrieve", "connection_error"): 2
    }


def test_the_recorder_keeps_what_a_failed_flush_could_not_write() -> None:
    recorder = figures.CallRecorder()
    written: list[list[figures.CallTotals]] = []
    failing = [True]

    def sink(rows: list[figures.CallTotals]) -> None:
        if failing[0]:
            raise psycopg.OperationalError("database restarting")
        written.append(rows)

    recorder.record("batches.retrieve", "ok", 0.03)
    recorder._sink = sink  # as flush_to sets it, without its thread
    assert recorder.flush() == 0 and written == []
    recorder.record("batches.retrieve", "ok", 3.0)
    failing[0] = False
    assert recorder.flush() == 1
    (row,) = written[0]
    assert (row.calls, row.seconds) == (2, pytest.approx(3.03))
    # 0.03 s is in the 0.05 bucket (index 1), 3 s in the 5.0 one (index 7).
    assert [i for i, n in enumerate(row.buckets) if n] == [1, 7]
    assert recorder.flush() == 0  # nothing pending


def test_the_flush_thread_hands_figures_over_every_interval() -> None:
    recorder = figures.CallRecorder()
    got = threading.Event()
    recorder.flush_to(lambda rows: got.set(), interval=0.05)
    recorder.record("files.list", "ok", 0.01)
    assert got.wait(5)


def write_and_scrape(tmp_path: Path, db_url: str, rows: list[figures.CallTotals]) -> str:
    openai_calls.write_calls(db_url, rows)
    with serve(tmp_path, db_url) as c:
        return c.get("/metrics").text


def test_metrics_export_the_written_figures_as_one_histogram(tmp_path: Path, db_url: str) -> None:
    recorder = figures.CallRecorder()
    for seconds in (0.02, 0.3, 0.3, 45.0):
        recorder.record("batches.retrieve", "ok", seconds)
    recorder.record("files.create", "server_error", 1.5)
    openai_calls.write_calls(db_url, recorder.take())
    recorder.record("batches.retrieve", "ok", 0.02)  # a second flush of the same labels adds up
    text = write_and_scrape(tmp_path, db_url, recorder.take())
    ok = {"operation": "batches.retrieve", "outcome": "ok"}
    assert sample(text, f"{HIST}_count", **ok) == 5
    assert sample(text, f"{HIST}_sum", **ok) == pytest.approx(45.64)
    assert sample(text, f"{HIST}_bucket", **ok, le="0.025") == 2
    assert sample(text, f"{HIST}_bucket", **ok, le="0.25") == 2
    assert sample(text, f"{HIST}_bucket", **ok, le="0.5") == 4
    assert sample(text, f"{HIST}_bucket", **ok, le="30.0") == 4
    assert sample(text, f"{HIST}_bucket", **ok, le="60.0") == 5
    assert sample(text, f"{HIST}_bucket", **ok, le="+Inf") == 5
    failed = {"operation": "files.create", "outcome": "server_error"}
    assert sample(text, f"{HIST}_count", **failed) == 1
    assert sample(text, f"{HIST}_bucket", **failed, le="1.0") == 0
    assert sample(text, f"{HIST}_bucket", **failed, le="2.5") == 1


def test_counters_only_grow_between_scrapes(tmp_path: Path, db_url: str) -> None:
    recorder = figures.CallRecorder()
    recorder.record("files.list", "ok", 0.1)
    openai_calls.write_calls(db_url, recorder.take())
    with serve(tmp_path, db_url) as c:
        first = c.get("/metrics").text
        recorder.record("files.list", "ok", 0.1)
        openai_calls.write_calls(db_url, recorder.take())
        second = c.get("/metrics").text
        third = c.get("/metrics").text
    labels = {"operation": "files.list", "outcome": "ok"}
    assert [sample(t, f"{HIST}_count", **labels) for t in (first, second, third)] == [1, 2, 2]


def test_a_run_process_writes_its_calls_at_exit(
    tmp_path: Path, db_url: str, simulator: ThreadedServer
) -> None:
    """A short-lived process (as a Dagster run): no flush interval passes, the exit writes the figures."""
    code = textwrap.dedent(
        f"""
        from batch_pipeline import openai_client as oai
        from batch_pipeline.config import load_settings
        from batch_pipeline.store.openai_calls import record_openai_calls

        record_openai_calls({db_url!r})
        settings = load_settings(_env_file=None, openai_base_url={simulator.base_url!r}, openai_api_key=None)
        with oai.sync_client(settings, max_retries=0) as client:
            client.files.list(limit=1)
            client.batches.list(limit=1)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DATABASE_URL"))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env, cwd=tmp_path)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT operation, outcome, calls FROM batchman.openai_calls ORDER BY 1"
        ).fetchall()
    assert rows == [("batches.list", "ok", 1), ("files.list", "ok", 1)]


def plan(db_url: str, query: str, params: dict) -> str:
    with psycopg.connect(db_url) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        rows = conn.execute("EXPLAIN (COSTS OFF) " + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_the_store_sums_as_many_buckets_as_the_recorder_fills() -> None:
    assert (
        openai_calls.CALL_BUCKETS
        == len(figures.CALL_BUCKETS_SECONDS) + 1
        == len(figures.CallTotals("o", "x").buckets)
    )


def test_a_scrape_reads_the_new_call_figures_by_primary_key(fresh_db_url: str) -> None:
    db_url = fresh_db_url  # a plan: no earlier test's statistics
    text = plan(db_url, openai_calls.CALLS_BETWEEN, {"after": 10, "upto": 20})
    assert "Index Scan using openai_calls_pkey" in text, text
    assert "Index Only Scan Backward using openai_calls_pkey" in plan(db_url, store_metrics.MAX_IDS, {})
