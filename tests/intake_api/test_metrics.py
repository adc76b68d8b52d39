"""``GET /metrics``: the intake counters of this process and the database's figures, behind the token."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.intake_api.conftest import serve, valid_request


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scrape reads afresh and counts every committed id (the servers run in this process)."""
    from batch_pipeline.admin import intake_control
    from batch_pipeline.admin import metrics as admin_metrics

    monkeypatch.setattr(admin_metrics, "CACHE_SECONDS", 0.0)
    monkeypatch.setattr(admin_metrics, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(intake_control, "CACHE_SECONDS", 0.0)


def families(text: str) -> dict[str, str]:
    """Family name -> type, from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name{labels}`` (labels in any order; 0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return 0.0


def test_intake_counts_single_and_bulk_outcomes_by_reason(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        before = c.get("/metrics").text
        assert c.post("/api/requests", json=valid_request("m-1")).status_code == 202
        assert c.post("/api/requests", json=valid_request("m-1")).status_code == 409
        assert c.post("/api/requests", json=valid_request("m-2", url="/v1/nope")).status_code == 422
        bulk = [valid_request("m-3"), valid_request("m-4"), valid_request("m-1"), {"custom_id": "x"}]
        assert c.post("/api/requests/bulk", json=bulk).json()["accepted"] == 2
        after = c.get("/metrics").text

    def delta(**labels: str) -> float:
        return sample(after, "batchman_intake_requests_total", **labels) - sample(
            before, "batchman_intake_requests_total", **labels
        )

    assert delta(route="single", outcome="accepted", reason="") == 1
    assert delta(route="single", outcome="rejected", reason="duplicate_custom_id") == 1
    assert delta(route="single", outcome="rejected", reason="validation_error") == 1
    assert delta(route="bulk", outcome="accepted", reason="") == 2
    assert delta(route="bulk", outcome="rejected", reason="duplicate_custom_id") == 1
    assert delta(route="bulk", outcome="rejected", reason="invalid") == 1


def seed_pipeline(db_url: str) -> None:
    """A queue, batches in two states, tokens, and delivery attempts stamped a minute ago."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO batchman.batches (endpoint, model, state, input_tokens, output_tokens,"
            " openai_completed, openai_failed) VALUES"
            " ('/v1/responses', 'gpt-4o-mini', 'delivered', 100, 40, 3, 1),"
            " ('/v1/responses', 'gpt-4o-mini', 'openai_processing', NULL, NULL, NULL, NULL)"
        )
        batch_id = conn.execute("SELECT min(id) FROM batchman.batches").fetchone()[0]
        conn.execute(
            "INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, transitioned_at)"
            " VALUES (%s, 'delivering', 'delivered', now() - interval '1 minute')",
            (batch_id,),
        )
        conn.execute(
            "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
            " estimated_tokens, delivery_config, state, created_at) SELECT 'q-' || i, '/v1/embeddings',"
            " 'text-embedding-3-small', '{}', 2, 1, '{\"type\": \"webhook\"}', 'pending',"
            " now() - interval '90 seconds' FROM generate_series(1, 3) AS i"
        )
        conn.execute(
            "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
            " estimated_tokens, delivery_config, state) VALUES ('done-1', '/v1/responses', 'gpt-4o-mini',"
            " '{}', 2, 1, '{\"type\": \"rabbitmq\"}', 'openai_processed')"
        )
        request_id = conn.execute("SELECT id FROM batchman.requests WHERE custom_id = 'done-1'").fetchone()[0]
        conn.execute(
            "INSERT INTO batchman.delivery_attempts (request_id, delivery_config, outcome, duration_ms,"
            " attempted_at) VALUES (%s, '{\"type\": \"rabbitmq\"}', 'success', 30, now()),"
            " (%s, '{\"type\": \"rabbitmq\"}', 'timeout', 20000, now())",
            (request_id, request_id),
        )
        # Two OpenAI status polls a run process wrote: 0.02 s (first bucket) and 0.3 s (0.5 s bucket).
        conn.execute(
            "INSERT INTO batchman.openai_calls (operation, outcome, calls, seconds, buckets)"
            " VALUES ('batches.retrieve', 'ok', 2, 0.32, '{1,0,0,0,1,0,0,0,0,0,0,0,0}')"
        )


def test_database_figures(tmp_path: Path, db_url: str) -> None:
    seed_pipeline(db_url)
    with serve(tmp_path, db_url) as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = resp.text
    queue = {"endpoint": "/v1/embeddings", "model": "text-embedding-3-small"}
    assert sample(text, "batchman_queue_depth", **queue) == 3
    assert 80 < sample(text, "batchman_queue_oldest_age_seconds", **queue) < 3600
    assert sample(text, "batchman_batches", state="delivered") == 1
    assert sample(text, "batchman_batches", state="openai_processing") == 1
    assert sample(text, "batchman_delivery_backlog", state="openai_processed") == 1
    assert sample(text, "batchman_delivery_backlog", state="delivering") == 0
    assert sample(text, "batchman_openai_tokens_total", model="gpt-4o-mini", kind="input") == 100
    assert sample(text, "batchman_openai_tokens_total", model="gpt-4o-mini", kind="output") == 40
    assert sample(text, "batchman_result_lines_stored_total", model="gpt-4o-mini") == 4
    # 100 input and 40 output tokens at gpt-4o-mini's batch rates (0.075 and 0.30 USD per 1M).
    assert sample(text, "batchman_openai_cost_usd_total", model="gpt-4o-mini") == pytest.approx(1.95e-5)
    assert sample(text, "batchman_deliveries_total", type="rabbitmq", outcome="success") == 1
    assert sample(text, "batchman_deliveries_total", type="rabbitmq", outcome="timeout") == 1
    hist = "batchman_delivery_duration_seconds"
    assert sample(text, f"{hist}_bucket", type="rabbitmq", le="0.025") == 0
    assert sample(text, f"{hist}_bucket", type="rabbitmq", le="0.05") == 1
    assert sample(text, f"{hist}_bucket", type="rabbitmq", le="10.0") == 1
    assert sample(text, f"{hist}_bucket", type="rabbitmq", le="30.0") == 2
    assert sample(text, f"{hist}_count", type="rabbitmq") == 2
    assert sample(text, f"{hist}_sum", type="rabbitmq") == pytest.approx(20.03)
    moves = {"from_state": "delivering", "to_state": "delivered"}
    assert sample(text, "batchman_batch_transitions_total", **moves) == 1
    assert sample(text, "batchman_intake_paused") == 0
    assert sample(text, "batchman_database_up") == 1
    polls = {"operation": "batches.retrieve", "outcome": "ok"}
    assert sample(text, "batchman_openai_call_seconds_count", **polls) == 2
    assert sample(text, "batchman_openai_call_seconds_sum", **polls) == pytest.approx(0.32)
    assert sample(text, "batchman_openai_call_seconds_bucket", **polls, le="0.025") == 1
    assert sample(text, "batchman_openai_call_seconds_bucket", **polls, le="0.5") == 2


def test_counters_advance_between_scrapes_without_counting_twice(tmp_path: Path, db_url: str) -> None:
    seed_pipeline(db_url)
    with serve(tmp_path, db_url) as c:
        first = c.get("/metrics").text
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO batchman.delivery_attempts (request_id, delivery_config, outcome, duration_ms)"
                " SELECT id, delivery_config, 'success', 5 FROM batchman.requests WHERE custom_id = 'done-1'"
            )
            conn.execute("UPDATE batchman.intake_control SET paused = true")
        second = c.get("/metrics").text
        third = c.get("/metrics").text
    success = {"type": "rabbitmq", "outcome": "success"}
    assert sample(first, "batchman_deliveries_total", **success) == 1
    assert sample(second, "batchman_deliveries_total", **success) == 2
    assert sample(third, "batchman_deliveries_total", **success) == 2
    assert sample(third, "batchman_delivery_duration_seconds_count", type="rabbitmq") == 3
    assert (
        sample(third, "batchman_batch_transitions_total", from_state="delivering", to_state="delivered") == 1
    )
    assert sample(third, "batchman_intake_paused") == 1


def test_fresh_ids_wait_until_they_are_settled(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch_pipeline.admin import metrics as admin_metrics

    monkeypatch.setattr(admin_metrics, "SETTLE_SECONDS", 3600.0)
    seed_pipeline(db_url)
    with serve(tmp_path, db_url) as c:
        text = c.get("/metrics").text
    # Handed out just now: their transactions might still be open, so they are left for later.
    assert sample(text, "batchman_deliveries_total", type="rabbitmq", outcome="success") == 0
    assert sample(text, "batchman_batches", state="delivered") == 1  # gauges are read as they are


def test_metrics_follow_the_api_token(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token="s3cret-token") as c:
        refused = c.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["errors"][0]["code"] == "unauthorized"
        assert c.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/metrics", headers={"authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert "batchman_batches" in families(ok.text)
        assert c.post("/metrics", headers={"x-api-token": "s3cret-token"}).status_code == 405
    with serve(tmp_path, db_url, api_token="s3cret-token", metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200


def test_metrics_answer_when_the_database_is_gone(tmp_path: Path, db_url: str, pg_server_url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with serve(tmp_path, db_url) as c:
        assert sample(c.get("/metrics").text, "batchman_database_up") == 1
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        resp = c.get("/metrics")
    assert resp.status_code == 200
    assert sample(resp.text, "batchman_database_up") == 0
    assert "batchman_intake_requests_total" in families(resp.text)


def test_the_request_id_is_echoed_or_made(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        given = c.get("/health", headers={"x-request-id": "trace-42.a"})
        assert given.headers["x-request-id"] == "trace-42.a"
        made = c.get("/health").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        # Not a sane token (spaces): replaced, never echoed as sent.
        odd = c.get("/health", headers={"x-request-id": "a b"}).headers["x-request-id"]
        assert odd != "a b"
        # Refusals before any route get one too.
        assert c.get("/api/requests", headers={"x-request-id": "r-1"}).headers["x-request-id"] == "r-1"
