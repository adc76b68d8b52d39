"""Webhook ``headers`` through the API: accepted on every intake path, stored as sent, shown masked."""

from __future__ import annotations

import httpx

from tests.intake_api.conftest import SharedApi, assert_error, fetch_row, path_for, valid_request

HOOK = {
    "type": "webhook",
    "webhook_url": "https://hooks.example.com/in?sig=abc123&page=1",
    "headers": {"Authorization": "Bearer secret-1", "X-Api-Key": "secret-2"},
}


def test_single_request_with_headers_is_stored_as_sent_and_shown_masked(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    resp = shared_client.post("/api/requests", json=valid_request("cred-1", delivery_config=HOOK))
    assert resp.status_code == 202, resp.text
    row = fetch_row(shared_api.db_url, "cred-1")
    assert row is not None and row["delivery_config"] == HOOK
    shown = shared_client.get(path_for("cred-1")).json()["delivery_config"]
    assert shown == {
        "type": "webhook",
        "webhook_url": "https://hooks.example.com/in?sig=***&page=1",
        "headers": {"Authorization": "***", "X-Api-Key": "***"},
    }
    listed = shared_client.get("/api/requests", params={"q": "cred-1"}).json()["data"]
    assert [r["delivery_config"] for r in listed] == [shown]
    assert "secret-1" not in shared_client.get("/api/requests").text


def test_bulk_items_with_headers_are_stored_with_them(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    items = [valid_request(f"cred-bulk-{i}", delivery_config=HOOK) for i in range(3)]
    resp = shared_client.post("/api/requests/bulk", json=items)
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 3
    for i in range(3):
        row = fetch_row(shared_api.db_url, f"cred-bulk-{i}")
        assert row is not None and row["delivery_config"]["headers"] == HOOK["headers"]


def test_a_header_outside_the_allowlist_is_a_422_and_nothing_is_stored(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    cfg = {**HOOK, "headers": {"Content-Type": "text/plain"}}
    resp = shared_client.post("/api/requests", json=valid_request("cred-bad", delivery_config=cfg))
    assert_error(resp, 422, "validation_error", "/delivery_config/headers/Content-Type")
    assert fetch_row(shared_api.db_url, "cred-bad") is None


def test_a_header_value_with_a_line_break_is_a_422(shared_client: httpx.Client) -> None:
    cfg = {**HOOK, "headers": {"Authorization": "Bearer x\r\nHost: evil"}}
    resp = shared_client.post("/api/requests", json=valid_request("cred-crlf", delivery_config=cfg))
    assert_error(resp, 422, "validation_error", "/delivery_config/headers/Authorization")
