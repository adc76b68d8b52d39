"""Intake pause through the API: 503 ``maintenance_mode`` on single and bulk intake, then 202 again."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from batch_pipeline.admin import intake_control
from tests.intake_api.conftest import count_rows, execute, valid_request

MAINTENANCE = {
    "code": "maintenance_mode",
    "title": "Service Temporarily Unavailable",
    "detail": "Request intake is temporarily paused for maintenance. Please retry shortly.",
}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_pause_refuses_single_and_bulk_intake_and_resume_accepts_again(client: httpx.Client, db_url) -> None:
    assert client.get("/api/intake").json()["paused"] is False
    paused = client.post("/api/intake/pause")
    assert paused.status_code == 200
    assert paused.json()["paused"] is True
    assert client.get("/api/intake").json()["paused"] is True

    single = client.post("/api/requests", json=valid_request("p-1"))
    assert single.status_code == 503
    assert single.json() == {"errors": [MAINTENANCE]}
    bulk = client.post("/api/requests/bulk", json=[valid_request("p-2"), valid_request("p-3")])
    assert bulk.status_code == 503
    assert bulk.json() == {"errors": [MAINTENANCE]}
    assert count_rows(db_url) == 0
    # Reads and operator actions go on while intake is paused.
    assert client.get("/api/requests").status_code == 200

    resumed = client.post("/api/intake/resume")
    assert resumed.json()["paused"] is False
    assert client.post("/api/requests", json=valid_request("p-1")).status_code == 202
    assert client.post("/api/requests/bulk", json=[valid_request("p-2")]).json()["accepted"] == 1
    assert count_rows(db_url) == 2


def test_pause_set_by_another_process_applies_after_the_cache_expires(client: httpx.Client, db_url) -> None:
    assert client.post("/api/requests", json=valid_request("o-0")).status_code == 202  # flag now cached
    n = iter(range(1, 10_000))
    execute(db_url, "UPDATE batchman.intake_control SET paused = true")
    wait_for(lambda: client.post("/api/requests", json=valid_request(f"o-{next(n)}")).status_code == 503)
    stored_while_cached = count_rows(db_url)
    assert client.post("/api/requests", json=valid_request("o-late")).status_code == 503
    assert count_rows(db_url) == stored_while_cached
    execute(db_url, "UPDATE batchman.intake_control SET paused = false")
    wait_for(lambda: client.post("/api/requests", json=valid_request(f"o-{next(n)}")).status_code == 202)
    assert count_rows(db_url) == stored_while_cached + 1


def test_pausing_twice_keeps_the_first_time_and_status_reads_the_database(client: httpx.Client) -> None:
    first = client.post("/api/intake/pause").json()
    again = client.post("/api/intake/pause").json()
    assert again == first  # changed_at is when intake stopped, not the last click
    assert first["changed_at"] is not None
    assert client.post("/api/intake/resume").json()["changed_at"] > first["changed_at"]


def test_the_cache_is_per_database(tmp_path, db_url, pg_server_url, template_db) -> None:
    """One process, two databases (as the tests run apps): a pause in one is no pause in the other."""
    from tests.intake_api.conftest import database_url, serve

    other = f"batchman_p_{time.monotonic_ns()}"
    import psycopg

    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{other}" TEMPLATE "{template_db}"')
    try:
        with serve(tmp_path, db_url) as a, serve(tmp_path, database_url(pg_server_url, other)) as b:
            a.post("/api/intake/pause")
            assert a.post("/api/requests", json=valid_request("c-1")).status_code == 503
            assert b.post("/api/requests", json=valid_request("c-1")).status_code == 202
    finally:
        intake_control.forget_cached()
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
