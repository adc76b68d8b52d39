"""``GET /health`` (liveness, no dependencies) and ``GET /health/ready`` (Postgres answers)."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from tests.intake_api.conftest import SharedApi, serve


def _without_rabbitmq(checks: dict[str, str]) -> dict[str, str]:
    assert checks.get("rabbitmq", "ok") == "ok", checks
    return {k: v for k, v in checks.items() if k != "rabbitmq"}


def test_health_answers_ok_in_simulator_mode(shared_client: httpx.Client) -> None:
    resp = shared_client.get("/health")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"status": "ok", "simulator": True}


def test_health_reports_simulator_false_with_an_openai_key(tmp_path: Path, shared_api: SharedApi) -> None:
    with serve(tmp_path, shared_api.db_url, openai_api_key="sk-test-not-real") as c:
        resp = c.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "simulator": False}


def test_ready_answers_200_when_postgres_answers(shared_client: httpx.Client) -> None:
    resp = shared_client.get("/health/ready")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["status"] == "ok"
    # RabbitMQ is checked too when RABBITMQ_URL is set in the environment (as CI does).
    assert _without_rabbitmq(data["checks"]) == {"postgres": "ok", "openai": "ok"}


def test_ready_answers_503_when_the_database_is_gone(tmp_path: Path, db_url: str, pg_server_url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with serve(tmp_path, db_url) as c:
        assert c.get("/health/ready").status_code == 200  # the pool holds a live connection now
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

        resp = c.get("/health/ready")
        assert resp.status_code == 503, resp.text
        data = resp.json()
        assert data["status"] == "unavailable"
        assert set(_without_rabbitmq(data["checks"])) == {"postgres"}
        assert data["checks"]["postgres"].startswith("error: ")

        # Liveness does not depend on the database.
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "simulator": True}


def test_health_needs_no_token(tmp_path: Path, shared_api: SharedApi) -> None:
    with serve(tmp_path, shared_api.db_url, api_token="s3cret") as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/health/ready")
        assert ready.status_code == 200
        assert _without_rabbitmq(ready.json()["checks"]) == {"postgres": "ok", "openai": "ok"}


def test_ready_answers_503_while_openai_refuses_the_key(tmp_path: Path, db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state, capacity_wait_reason)"
            " VALUES ('/v1/responses', 'gpt-4o-mini', 'waiting_for_capacity', 'openai_unauthorized')"
        )
    with serve(tmp_path, db_url) as c:
        resp = c.get("/health/ready")
    assert resp.status_code == 503, resp.text
    assert resp.json()["checks"]["postgres"] == "ok"
    assert resp.json()["checks"]["openai"].startswith("error: OpenAI refused the API key; 1 batches wait")
