"""Reading requests: look-up by custom_id, the filtered and paginated list, and redelivery."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb

from tests.intake_api.conftest import (
    SharedApi,
    assert_error,
    execute,
    fetch_row,
    path_for,
    valid_request,
)

# The fields the Elixir OpenAI Batch Manager returns for a request (clients rely on them), at least.
REQUEST_FIELDS = {
    "id",
    "batch_id",
    "custom_id",
    "url",
    "model",
    "state",
    "delivery_config",
    "error_msg",
    "created_at",
    "updated_at",
    "request_payload_size",
    "delivery_attempt_count",
    "delivery_attempts",
}

RESULT_LINE = {
    "id": "batch_req_123",
    "custom_id": "placeholder",
    "response": {"status_code": 200, "request_id": "req_1", "body": {"output_text": "Paris 🇫🇷"}},
    "error": None,
}


def _submit(client: httpx.Client, custom_id: str, **overrides: Any) -> None:
    resp = client.post("/api/requests", json=valid_request(custom_id, **overrides))
    assert resp.status_code == 202, resp.text


def _bulk(client: httpx.Client, items: list[dict[str, Any]]) -> None:
    resp = client.post("/api/requests/bulk", json=items)
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == len(items)


def _new_batch(db_url: str, endpoint: str = "/v1/responses", model: str = "gpt-4o-mini") -> int:
    rows = execute(
        db_url,
        "INSERT INTO batchman.batches (endpoint, model) VALUES (%s, %s) RETURNING id",
        (endpoint, model),
    )
    return rows[0][0]


def _set_result(db_url: str, custom_id: str, state: str, result: dict | None = None) -> None:
    line = {**RESULT_LINE, "custom_id": custom_id} if result is None else result
    execute(
        db_url,
        "UPDATE batchman.requests SET result = %s, state = %s WHERE custom_id = %s",
        (Jsonb(line), state, custom_id),
    )


def _ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# ---------------------------------------------------------------------------------------------------
# GET /api/requests/{custom_id}


def test_get_returns_every_request_field_for_a_new_request(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    _submit(shared_client, "get-1")
    resp = shared_client.get("/api/requests/get-1")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert set(data) >= REQUEST_FIELDS | {"result"}
    row = fetch_row(shared_api.db_url, "get-1")
    assert row is not None
    assert data["id"] == row["id"]
    assert data["batch_id"] is None
    assert data["custom_id"] == "get-1"
    assert data["url"] == "/v1/responses"
    assert data["model"] == "gpt-4o-mini"
    assert data["state"] == "pending"
    # The token in the URL's query is a credential: shown masked, stored as sent.
    assert data["delivery_config"] == {
        "type": "webhook",
        "webhook_url": "https://hooks.example.com/batch?token=***",
    }
    assert row["delivery_config"] == valid_request()["delivery_config"]
    assert data["error_msg"] is None
    assert data["request_payload_size"] == row["payload_bytes"] == len(row["payload"].encode())
    assert data["delivery_attempt_count"] == 0
    assert data["delivery_attempts"] == []
    assert data["result"] is None
    created, updated = _ts(data["created_at"]), _ts(data["updated_at"])
    assert created == row["created_at"]
    assert updated >= created
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    # The stored payload never leaks through the API.
    assert "payload" not in data
    assert "request_payload" not in data


def test_get_returns_batch_result_error_and_delivery_attempts_newest_first(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    _submit(shared_client, "get-2", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "results"})
    batch_id = _new_batch(shared_api.db_url)
    result = {**RESULT_LINE, "custom_id": "get-2"}
    execute(
        shared_api.db_url,
        "UPDATE batchman.requests SET batch_id = %s, state = 'delivery_failed', result = %s, "
        "error_msg = 'queue not found' WHERE custom_id = 'get-2'",
        (batch_id, Jsonb(result)),
    )
    row = fetch_row(shared_api.db_url, "get-2")
    assert row is not None
    execute(
        shared_api.db_url,
        "INSERT INTO batchman.delivery_attempts "
        "(request_id, delivery_config, outcome, http_status, duration_ms, error_msg, attempted_at) VALUES "
        "(%s, %s, 'success', NULL, 12, NULL, now() - interval '2 minutes'), "
        "(%s, %s, 'queue_not_found', NULL, 3, 'no queue results', now() - interval '1 minute')",
        (row["id"], Jsonb(row["delivery_config"]), row["id"], Jsonb(row["delivery_config"])),
    )
    resp = shared_client.get("/api/requests/get-2")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["batch_id"] == batch_id
    assert data["state"] == "delivery_failed"
    assert data["error_msg"] == "queue not found"
    assert data["result"] == result
    assert data["delivery_attempt_count"] == 2
    attempts = data["delivery_attempts"]
    assert [a["outcome"] for a in attempts] == ["queue_not_found", "success"]
    for a in attempts:
        assert set(a) >= {"id", "outcome", "error_msg", "delivery_config", "attempted_at"}
        assert a["delivery_config"] == {"type": "rabbitmq", "rabbitmq_queue": "results"}
    assert attempts[0]["error_msg"] == "no queue results"
    assert attempts[1]["error_msg"] is None
    assert _ts(attempts[0]["attempted_at"]) > _ts(attempts[1]["attempted_at"])


def test_get_unknown_custom_id_answers_404_not_found(shared_client: httpx.Client) -> None:
    resp = shared_client.get("/api/requests/does-not-exist")
    errors = assert_error(resp, 404, "not_found")
    assert errors == [
        {
            "code": "not_found",
            "title": "Request Not Found",
            "detail": "No request found with custom_id=does-not-exist",
        }
    ]


@pytest.mark.parametrize(
    "custom_id",
    [
        "tenant/a/b",
        "ends/redeliver",
        "a b?c#d%e&f=g+h",
        "a/../b",
        "/leading-slash",
        "trailing-slash/",
        "ünïcödé/中文/😀",
    ],
)
def test_custom_ids_with_reserved_characters_are_addressable(
    shared_client: httpx.Client, custom_id: str
) -> None:
    _submit(shared_client, custom_id)
    resp = shared_client.get(path_for(custom_id))
    assert resp.status_code == 200, resp.text
    assert resp.json()["custom_id"] == custom_id
    missing = shared_client.get(path_for(custom_id + "-missing"))
    errors = assert_error(missing, 404, "not_found")
    assert errors[0]["detail"] == f"No request found with custom_id={custom_id}-missing"


def test_custom_id_with_slashes_is_addressable_unencoded(shared_client: httpx.Client) -> None:
    _submit(shared_client, "raw/slash/id")
    resp = shared_client.get("/api/requests/raw/slash/id")
    assert resp.status_code == 200, resp.text
    assert resp.json()["custom_id"] == "raw/slash/id"
    # A GET ending in /redeliver is a lookup, not a redelivery.
    _submit(shared_client, "raw/redeliver")
    looked_up = shared_client.get("/api/requests/raw/redeliver")
    assert looked_up.status_code == 200
    assert looked_up.json()["custom_id"] == "raw/redeliver"


# ---------------------------------------------------------------------------------------------------
# GET /api/requests


def _ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [r["custom_id"] for r in resp.json()["data"]]


def test_list_filters(client: httpx.Client, db_url: str) -> None:
    chat = {"url": "/v1/chat/completions", "body": {"model": "gpt-4.1", "messages": []}}
    _bulk(
        client,
        [
            valid_request("list-a-1"),
            valid_request("list-a-2", **chat),
            valid_request("list-b-1", body={"model": "gpt-4.1", "input": "x"}),
            valid_request("100%_done"),
            valid_request("100x_done"),
            valid_request("100%xdone"),
            valid_request("back\\slash"),
            valid_request("under_score"),
            valid_request("underXscore"),
        ],
    )
    execute(db_url, "UPDATE batchman.requests SET state = 'delivered' WHERE custom_id = 'list-a-2'")
    batch_id = _new_batch(db_url)
    other_batch = _new_batch(db_url)
    execute(
        db_url,
        "UPDATE batchman.requests SET batch_id = %s WHERE custom_id IN ('list-a-1', 'list-b-1')",
        (batch_id,),
    )

    def ids(**params: Any) -> set[str]:
        return set(_ids(client.get("/api/requests", params=params)))

    assert len(ids()) == 9
    assert ids(state="delivered") == {"list-a-2"}
    assert len(ids(state="pending")) == 8
    assert ids(batch_id=batch_id) == {"list-a-1", "list-b-1"}
    assert ids(batch_id=other_batch) == set()
    assert ids(model="gpt-4.1") == {"list-a-2", "list-b-1"}
    assert ids(model="gpt-4") == set()  # exact match, not a prefix
    assert ids(url="/v1/chat/completions") == {"list-a-2"}
    assert len(ids(url="/v1/responses")) == 8
    assert ids(q="list-a") == {"list-a-1", "list-a-2"}
    assert ids(q="%") == {"100%_done", "100%xdone"}
    assert ids(q="%_") == {"100%_done"}
    assert ids(q="_") == {"100%_done", "100x_done", "under_score"}
    assert ids(q="r_s") == {"under_score"}
    assert ids(q="\\") == {"back\\slash"}
    assert ids(q="LIST") == set()
    assert ids(state="pending", model="gpt-4.1") == {"list-b-1"}
    assert ids(state="pending", batch_id=batch_id, q="b-") == {"list-b-1"}

    listed = client.get("/api/requests", params={"q": "list-a-1"}).json()
    assert listed["next_cursor"] is None
    (item,) = listed["data"]
    assert set(item) >= REQUEST_FIELDS - {"delivery_attempts"}
    assert "result" not in item
    assert item["batch_id"] == batch_id


def test_list_keyset_pagination_walks_every_row_once_newest_first(client: httpx.Client) -> None:
    n = 23
    _bulk(client, [valid_request(f"page-{i:02d}") for i in range(n)])

    seen: list[dict[str, Any]] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor is not None:
            params["before"] = cursor
        resp = client.get("/api/requests", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages += 1
        assert set(page) == {"data", "next_cursor"}
        assert len(page["data"]) <= 5
        seen += page["data"]
        if page["next_cursor"] is None:
            break
        assert len(page["data"]) == 5
        assert page["next_cursor"] == page["data"][-1]["id"]
        cursor = page["next_cursor"]
        assert pages < 10
    assert pages == 5
    ids = [r["id"] for r in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == n
    assert [r["custom_id"] for r in seen] == [f"page-{i:02d}" for i in reversed(range(n))]

    # Boundaries: a page exactly as big as what is left has no cursor; one fewer does.
    exact = client.get("/api/requests", params={"limit": n}).json()
    assert len(exact["data"]) == n
    assert exact["next_cursor"] is None
    short = client.get("/api/requests", params={"limit": n - 1}).json()
    assert short["next_cursor"] == short["data"][-1]["id"]
    rest = client.get("/api/requests", params={"limit": n, "before": short["next_cursor"]}).json()
    assert [r["custom_id"] for r in rest["data"]] == ["page-00"]
    assert rest["next_cursor"] is None
    # The default limit covers them all.
    assert len(client.get("/api/requests").json()["data"]) == n


def test_list_pagination_with_a_filter(client: httpx.Client) -> None:
    _bulk(
        client,
        [
            valid_request(f"pf-{i}", body={"model": "gpt-4.1" if i % 2 else "gpt-4o-mini", "input": "x"})
            for i in range(10)
        ],
    )
    got: list[str] = []
    params: dict[str, Any] = {"model": "gpt-4.1", "limit": 2}
    while True:
        page = client.get("/api/requests", params=params).json()
        got += [r["custom_id"] for r in page["data"]]
        if page["next_cursor"] is None:
            break
        params["before"] = page["next_cursor"]
    assert got == ["pf-9", "pf-7", "pf-5", "pf-3", "pf-1"]


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"limit": 0}, "/limit"),
        ({"limit": -1}, "/limit"),
        ({"limit": 501}, "/limit"),
        ({"limit": "ten"}, "/limit"),
        ({"limit": ""}, "/limit"),
        ({"limit": 1.5}, "/limit"),
        ({"before": "abc"}, "/before"),
        ({"batch_id": "x"}, "/batch_id"),
        ({"state": "no-such-state"}, "/state"),
    ],
    ids=["zero", "negative", "over-500", "text", "empty", "float", "before-text", "batch_id-text", "state"],
)
def test_list_bad_query_parameters_answer_422(
    shared_client: httpx.Client, params: dict[str, Any], pointer: str
) -> None:
    resp = shared_client.get("/api/requests", params=params)
    assert_error(resp, 422, "validation_error", pointer)


def test_list_limit_bounds_are_accepted(shared_client: httpx.Client) -> None:
    for limit in (1, 500):
        resp = shared_client.get("/api/requests", params={"limit": limit})
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["data"]) <= limit


# ---------------------------------------------------------------------------------------------------
# POST /api/requests/{custom_id}/redeliver


def test_redeliver_unknown_answers_404(shared_client: httpx.Client) -> None:
    resp = shared_client.post("/api/requests/no-such-request/redeliver")
    errors = assert_error(resp, 404, "not_found")
    assert errors[0]["title"] == "Request Not Found"
    assert errors[0]["detail"] == "No request found with custom_id=no-such-request"


def test_redeliver_without_result_answers_422_invalid_state(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    _submit(shared_client, "rd-pending")
    resp = shared_client.post("/api/requests/rd-pending/redeliver")
    errors = assert_error(resp, 422, "invalid_state")
    assert errors[0]["title"] == "Invalid Request State"
    row = fetch_row(shared_api.db_url, "rd-pending")
    assert row is not None
    assert row["state"] == "pending"
    assert row["next_attempt_at"] is None


def test_redeliver_after_delivery_answers_202_and_queues_the_result(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    _submit(shared_client, "rd-1")
    _set_result(shared_api.db_url, "rd-1", "delivered")
    before = fetch_row(shared_api.db_url, "rd-1")
    assert before is not None
    assert before["next_attempt_at"] is None

    resp = shared_client.post("/api/requests/rd-1/redeliver")
    assert resp.status_code == 202, resp.text
    assert resp.json() == {
        "id": before["id"],
        "custom_id": "rd-1",
        "state": "openai_processed",
        "message": "Redelivery triggered",
    }
    after = fetch_row(shared_api.db_url, "rd-1")
    assert after is not None
    assert after["state"] == "openai_processed"
    assert after["next_attempt_at"] is not None
    assert after["result"] == before["result"]
    assert after["updated_at"] >= before["updated_at"]

    got = shared_client.get("/api/requests/rd-1").json()
    assert got["state"] == "openai_processed"
    assert got["result"] == {**RESULT_LINE, "custom_id": "rd-1"}


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("openai_processed", 202),
        ("delivered", 202),
        ("failed", 202),
        ("delivery_failed", 202),
        ("expired", 202),
        ("cancelled", 202),
        ("pending", 422),
        ("openai_processing", 422),
        ("delivering", 422),
    ],
)
def test_redeliver_by_state(
    shared_client: httpx.Client, shared_api: SharedApi, state: str, status: int
) -> None:
    custom_id = f"rd-state/{state}/{uuid.uuid4().hex[:8]}"
    _submit(shared_client, custom_id)
    _set_result(shared_api.db_url, custom_id, state)
    resp = shared_client.post(f"{path_for(custom_id)}/redeliver")
    row = fetch_row(shared_api.db_url, custom_id)
    assert row is not None
    if status == 202:
        assert resp.status_code == 202, resp.text
        assert resp.json() == {
            "id": row["id"],
            "custom_id": custom_id,
            "state": "openai_processed",
            "message": "Redelivery triggered",
        }
        assert row["state"] == "openai_processed"
        assert row["next_attempt_at"] is not None
    else:
        errors = assert_error(resp, 422, "invalid_state")
        assert state in errors[0]["detail"]
        assert row["state"] == state
        assert row["next_attempt_at"] is None


def test_redeliver_custom_id_with_slashes_unencoded(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    _submit(shared_client, "rd/raw/slash")
    _set_result(shared_api.db_url, "rd/raw/slash", "delivered")
    resp = shared_client.post("/api/requests/rd/raw/slash/redeliver")
    assert resp.status_code == 202, resp.text
    assert resp.json()["custom_id"] == "rd/raw/slash"


def test_nul_in_a_custom_id_path_is_not_found_not_a_500(shared_client: httpx.Client) -> None:
    """No stored custom_id can contain U+0000, so looking one up is a plain 404."""
    errors = assert_error(shared_client.get("/api/requests/a%00b"), 404, "not_found")
    assert errors[0]["detail"] == "No request found with custom_id=a\x00b"
    assert_error(shared_client.post("/api/requests/a%00b/redeliver"), 404, "not_found")


@pytest.mark.parametrize("param", ["q", "state", "model", "url"])
def test_nul_in_a_list_filter_is_not_a_500(shared_client: httpx.Client, param: str) -> None:
    """Postgres text cannot hold U+0000: the filter is refused with a 422 naming it, never a 500."""
    resp = shared_client.get("/api/requests", params={param: "a\x00b"})
    assert_error(resp, 422, "validation_error", f"/{param}")
