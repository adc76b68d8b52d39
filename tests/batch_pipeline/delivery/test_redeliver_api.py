"""``POST /api/batches/{id}/redeliver`` on the real app and Postgres, and the intake-time SSRF check."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest

from intake_api.main import create_app
from tests.batch_pipeline.delivery.conftest import batch_state, requests_of, seed_batch, webhook
from tests.conftest import ServerThread, make_settings
from tests.intake_api.conftest import assert_error, valid_request


def serve(settings, db_url: str) -> ServerThread:
    return ServerThread(create_app(settings, database_url=db_url))


@pytest.fixture
def client(tmp_path, db_url) -> Iterator[httpx.Client]:
    server = serve(make_settings(tmp_path, database_url=db_url), db_url)
    with server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_redeliver_failed_then_all(db_url, client) -> None:
    batch_id, ids = seed_batch(db_url, [webhook("http://r.example/")] * 3)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET state = CASE WHEN id = %s THEN 'delivery_failed'"
            " ELSE 'delivered' END WHERE batch_id = %s",
            (ids[0], batch_id),
        )
        conn.execute("UPDATE batchman.batches SET state = 'partially_delivered' WHERE id = %s", (batch_id,))

    resp = client.post(f"/api/batches/{batch_id}/redeliver")
    assert resp.status_code == 202, resp.text
    assert resp.json() | {"message": ""} == {
        "batch_id": batch_id, "only": "failed", "requeued": 1, "state": "delivering", "message": ""
    }  # fmt: skip
    assert [r["state"] for r in requests_of(db_url, batch_id)] == [
        "openai_processed",
        "delivered",
        "delivered",
    ]
    assert batch_state(db_url, batch_id) == "delivering"

    resp = client.post(f"/api/batches/{batch_id}/redeliver", params={"only": "all"})
    assert resp.status_code == 202 and resp.json()["requeued"] == 3
    assert {r["state"] for r in requests_of(db_url, batch_id)} == {"openai_processed"}


def test_unknown_batch_is_404_and_bad_only_is_422(client) -> None:
    assert_error(client.post("/api/batches/999999/redeliver"), 404, "not_found")
    assert_error(client.post("/api/batches/1/redeliver", params={"only": "some"}), 422, "validation_error")


def test_batch_without_results_cannot_be_redelivered(db_url, client) -> None:
    batch_id, _ = seed_batch(db_url, [webhook("http://r.example/")], state="openai_processing")
    assert_error(client.post(f"/api/batches/{batch_id}/redeliver"), 422, "invalid_state")


def test_intake_rejects_internal_webhook_urls_when_blocking(tmp_path, db_url) -> None:
    settings = make_settings(
        tmp_path, database_url=db_url, webhook_block_private_networks=True, webhook_allowed_hosts="hooks.lan"
    )
    with serve(settings, db_url) as server, httpx.Client(base_url=server.url) as c:
        for i, url in enumerate(
            ["http://127.0.0.1:9000/h", "http://localhost/h", "http://169.254.169.254/x"]
        ):
            body = valid_request(f"ssrf-{i}", delivery_config={"type": "webhook", "webhook_url": url})
            assert_error(
                c.post("/api/requests", json=body),
                422,
                "webhook_url_not_allowed",
                "/delivery_config/webhook_url",
            )
        ok = valid_request(
            "ssrf-ok", delivery_config={"type": "webhook", "webhook_url": "http://hooks.lan/h"}
        )
        assert c.post("/api/requests", json=ok).status_code == 202
