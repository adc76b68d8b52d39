"""``GET /health/ready`` with the real parts: RabbitMQ (the broker, then a port nobody listens on) and
the Dagster daemon's heartbeats, written into Dagster's own run storage as the daemon writes them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_pipeline.admin.health import REQUIRED_DAEMONS
from batch_pipeline.db import dagster_storage_url
from tests.conftest import free_port
from tests.intake_api.conftest import serve


def beat(storage_url: str, ages: dict[str, float]) -> None:
    """Heartbeats ``age`` seconds old, per daemon type, through dagster-postgres's run storage."""
    from dagster._daemon.types import DaemonHeartbeat
    from dagster_postgres import PostgresRunStorage

    storage = PostgresRunStorage(dagster_storage_url(storage_url))  # creates Dagster's tables
    try:
        for daemon_type, age in ages.items():
            storage.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age, daemon_type, "test-daemon", []))
    finally:
        storage.dispose()


@pytest.fixture
def dagster_url(empty_db_url: str) -> Iterator[str]:
    """Dagster's storage in a database of its own (as `batchman up` with the embedded server)."""
    yield empty_db_url


FRESH = dict.fromkeys(REQUIRED_DAEMONS, 5.0)


def test_ready_with_a_beating_daemon(tmp_path: Path, db_url: str, dagster_url: str) -> None:
    beat(dagster_url, FRESH)
    with serve(tmp_path, db_url, dagster_database_url=dagster_url, rabbitmq_url=None) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"postgres": "ok", "openai": "ok", "dagster_daemon": "ok"}


def test_a_stale_or_missing_heartbeat_is_named(tmp_path: Path, db_url: str, dagster_url: str) -> None:
    beat(dagster_url, {"SENSOR": 5.0, "SCHEDULER": 600.0})  # no QUEUED_RUN_COORDINATOR at all
    with serve(tmp_path, db_url, dagster_database_url=dagster_url) as c:
        resp = c.get("/health/ready")
        assert c.get("/health").status_code == 200  # liveness does not look
    assert resp.status_code == 503, resp.text
    checks = resp.json()["checks"]
    assert checks["postgres"] == "ok"
    daemon = checks["dagster_daemon"]
    assert daemon.startswith("error: no recent daemon heartbeat")
    assert "SCHEDULER 6" in daemon and "QUEUED_RUN_COORDINATOR never" in daemon
    assert "SENSOR" not in daemon.replace("QUEUED_RUN_COORDINATOR", "")


def test_a_named_dagster_storage_without_dagster_tables_is_not_ready(
    tmp_path: Path, db_url: str, dagster_url: str
) -> None:
    with serve(tmp_path, db_url, dagster_database_url=dagster_url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["checks"]["dagster_daemon"].startswith("error: no Dagster storage here")


def test_an_unreachable_dagster_storage_is_named(tmp_path: Path, db_url: str) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/dagster"
    with serve(tmp_path, db_url, dagster_database_url=url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["checks"]["dagster_daemon"].startswith("error: Dagster storage unreachable")


def test_dagster_tables_in_our_own_database_are_checked(tmp_path: Path, db_url: str) -> None:
    """External DATABASE_URL and no DAGSTER_DATABASE_URL: Dagster's tables sit in its public schema."""
    beat(db_url, {**FRESH, "SENSOR": 900.0})
    with serve(tmp_path, db_url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["checks"]["dagster_daemon"].startswith("error: no recent daemon heartbeat (SENSOR 9")


def test_rabbitmq_is_checked_when_configured(tmp_path: Path, db_url: str, rabbitmq_url: str) -> None:
    with serve(tmp_path, db_url, rabbitmq_url=rabbitmq_url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"postgres": "ok", "openai": "ok", "rabbitmq": "ok"}


def test_rabbitmq_down_is_named(tmp_path: Path, db_url: str) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    with serve(tmp_path, db_url, rabbitmq_url=url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503, resp.text
    checks = resp.json()["checks"]
    assert checks["postgres"] == "ok"
    assert checks["rabbitmq"].startswith("error: ")
    assert "guest" not in resp.text  # the URL (and its credentials) is never shown


def test_rabbitmq_refusing_our_credentials_is_not_ready(
    tmp_path: Path, db_url: str, rabbitmq_url: str
) -> None:
    wrong = rabbitmq_url.replace("guest:guest@", "guest:not-the-password@")
    with serve(tmp_path, db_url, rabbitmq_url=wrong) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503
    assert resp.json()["checks"]["rabbitmq"].startswith("error: ")
    assert "not-the-password" not in resp.text
