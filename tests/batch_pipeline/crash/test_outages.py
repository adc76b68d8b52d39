"""Outages of what the API and delivery depend on, made with a TCP proxy in front of the shared
servers (``tests/tcp_proxy.py``), never by stopping them: Postgres unreachable while clients post, a
webhook receiver down for three retry rounds; and the API process killed in the middle of a bulk call.

RabbitMQ cut during delivery and during intake is covered by ``tests/batch_pipeline/delivery/
test_rabbitmq_delivery.py`` (``test_connection_cut_mid_delivery_still_delivers_everything``, a twelve
second outage mid-run) and ``tests/batch_pipeline/intake/test_rabbitmq.py``
(``test_consumer_reconnects_after_the_connection_is_cut``, a cut after commit before ack).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from tests.conftest import ServerThread, make_settings
from tests.intake_api.conftest import valid_request
from tests.tcp_proxy import TcpProxy


def stored(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT custom_id FROM batchman.requests")}


@pytest.fixture
def pg_proxy(db_url: str) -> Iterator[TcpProxy]:
    with TcpProxy(urlsplit(db_url).port or 5432) as proxy:
        yield proxy


@pytest.fixture
def api_through_proxy(tmp_path: Path, db_url: str, pg_proxy: TcpProxy) -> Iterator[httpx.Client]:
    from intake_api.main import create_app

    url = pg_proxy.replace_port(db_url)
    settings = make_settings(tmp_path, database_url=url)
    with (
        ServerThread(create_app(settings, database_url=url)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client


def test_postgres_unreachable_answers_503_never_a_lost_202_and_intake_resumes(
    api_through_proxy: httpx.Client, pg_proxy: TcpProxy, db_url: str
) -> None:
    client = api_through_proxy
    answers: dict[str, int] = {}

    def post(custom_id: str) -> int:
        status = client.post("/api/requests", json=valid_request(custom_id)).status_code
        answers[custom_id] = status
        return status

    assert post("before") == 202
    pg_proxy.down()
    started = time.monotonic()
    # The first finds its pooled connection broken, the second finds no connection within the
    # pool's wait (10 s): both are told to come back, neither is left hanging.
    during = [post(f"down-{i}") for i in range(2)]
    assert during == [503, 503], during
    assert time.monotonic() - started < 25
    pg_proxy.up()
    deadline = time.monotonic() + 30
    after = 0
    while post(f"after-{after}") != 202:  # no restart: the pool reconnects by itself
        after += 1
        assert time.monotonic() < deadline, answers
    accepted = {cid for cid, status in answers.items() if status == 202}
    assert accepted <= stored(db_url)  # every 202 is stored
    assert not {cid for cid, s in answers.items() if s not in (202, 503)}, answers


def test_a_webhook_receiver_down_for_three_retry_rounds_gets_everything_once_it_is_up(db_url) -> None:
    from batch_pipeline.delivery.deliverer import deliver_batch
    from tests.batch_pipeline.delivery.conftest import (
        Receiver,
        attempts_of,
        ok,
        options,
        requests_of,
        seed_batch,
        serve,
        webhook,
    )

    with serve(Receiver(ok)) as rx, TcpProxy(urlsplit(rx.url).port) as proxy:
        batch_id, ids = seed_batch(db_url, [webhook(proxy.replace_port(rx.url))] * 5)
        proxy.down()  # the receiver's port refuses connections
        rounds = options(schedule=(60.0, 60.0, 60.0, 60.0))
        for _ in range(3):
            report = asyncio.run(deliver_batch(db_url, batch_id, rounds))
            assert report.attempts == 5 and report.batch_state is None  # all failed, none given up
            assert {r["state"] for r in requests_of(db_url, batch_id)} == {"openai_processed"}
            with psycopg.connect(db_url) as conn:  # the wait until the next round passes
                conn.execute("UPDATE batchman.requests SET next_attempt_at = now()")
        assert rx.total() == 0 and proxy.refused >= 15
        proxy.up()
        report = asyncio.run(deliver_batch(db_url, batch_id, rounds))
    assert report.batch_state == "delivered"
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"delivered"}
    assert sorted(int(k) for k in rx.hits) == ids and rx.total() == 5  # each exactly once
    for rid in ids:
        outcomes = [a["outcome"] for a in attempts_of(db_url, rid)]
        assert len(outcomes) == 4 and outcomes[-1] == "success", outcomes


# The API in its own process, as `batchman api` runs it.
def api_process(db_url: str, tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "DATA_DIR": str(tmp_path), "API_TOKEN": ""}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "intake_api.main:create_app",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_healthy(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180  # a ceiling for a loaded machine; ends as soon as it answers
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)


@pytest.mark.process
@pytest.mark.soak
def test_the_api_killed_mid_bulk_stores_all_of_the_call_or_none_and_a_retry_gets_the_rest(
    db_url, tmp_path
) -> None:
    from tests.conftest import free_port

    items = [valid_request(f"bulk-{i}") for i in range(3000)]
    lines = [(json.dumps(item) + "\n").encode() for item in items]
    sent = threading.Event()
    copying = threading.Event()

    def body() -> Iterator[bytes]:
        # Half the body, then wait until the API is writing it to Postgres, inside its transaction.
        yield from lines[: len(lines) // 2]
        sent.set()
        copying.wait(180)
        yield from lines[len(lines) // 2 :]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = api_process(db_url, tmp_path, port)
    outcome: dict[str, Any] = {}
    try:
        wait_healthy(url, proc)

        def call() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{url}/api/requests/bulk",
                    content=body(),
                    headers={"content-type": "application/x-ndjson"},
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        assert sent.wait(180)
        deadline = time.monotonic() + 180
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY batchman.requests%%'"
                " AND datname = current_database()"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the API never started its COPY"
                time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        copying.set()
        caller.join(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert "error" in outcome, outcome  # no answer: the client knows nothing was confirmed
    assert stored(db_url) == set()  # the call's one transaction died with the process

    proc = api_process(db_url, tmp_path, port)  # restarted; the client sends the same call again
    try:
        wait_healthy(url, proc)
        again = httpx.post(
            f"{url}/api/requests/bulk",
            content=b"".join(lines),
            headers={"content-type": "application/x-ndjson"},
            timeout=60,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert again.status_code == 200, again.text[:500]
    assert again.json()["accepted"] == len(items)
    assert stored(db_url) == {item["custom_id"] for item in items}
