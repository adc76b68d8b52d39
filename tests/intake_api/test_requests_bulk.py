"""``POST /api/requests/bulk``: per-item results in order, JSON arrays and NDJSON, limits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.intake_api.conftest import (
    SharedApi,
    assert_error,
    check_error_item,
    count_rows,
    execute,
    fetch_row,
    http_client,
    serve,
    valid_request,
    without,
)

NDJSON = {"content-type": "application/x-ndjson"}


def _results_ok(data: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Check the bulk response shape and that the counts add up; return the results."""
    assert set(data) == {"accepted", "duplicate", "invalid", "results"}
    results = data["results"]
    assert len(results) == n
    for r in results:
        assert r["status"] in ("accepted", "duplicate", "invalid", "too_large")
        if r["status"] in ("accepted", "duplicate"):
            assert set(r) == {"status", "custom_id"}, r
        else:
            assert set(r) == {"status", "custom_id", "errors"}, r
            assert r["errors"]
            for e in r["errors"]:
                check_error_item(e)
    assert data["accepted"] == sum(r["status"] == "accepted" for r in results)
    assert data["duplicate"] == sum(r["status"] == "duplicate" for r in results)
    assert data["invalid"] == n - data["accepted"] - data["duplicate"]
    return results


def _pointers(result: dict[str, Any]) -> list[str]:
    return [e["source"]["pointer"] for e in result["errors"]]


def test_mixed_array_reports_each_item_in_order_and_stores_the_valid_ones(
    client: httpx.Client, db_url: str
) -> None:
    assert client.post("/api/requests", json=valid_request("bulk-existing")).status_code == 202
    items: list[Any] = [
        valid_request("bulk-a"),
        without(valid_request("bulk-bad-url"), "url"),
        valid_request("bulk-existing", body={"model": "gpt-4.1", "input": "changed"}),
        valid_request("bulk-b", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "out"}),
        valid_request("bulk-a", body={"model": "gpt-4.1", "input": "second copy"}),
        42,
        valid_request("bulk-bad-hook", delivery_config={"type": "webhook", "webhook_url": "ftp://x/y"}),
        valid_request("bulk-tok", body={"model": "gpt-4o", "input": "word " * 80_000}),
        valid_request("bulk-c", url="/v1/chat/completions"),
    ]
    resp = client.post("/api/requests/bulk", json=items)
    assert resp.status_code == 200, resp.text[:500]
    data = resp.json()
    results = _results_ok(data, len(items))
    assert [(r["status"], r["custom_id"]) for r in results] == [
        ("accepted", "bulk-a"),
        ("invalid", "bulk-bad-url"),
        ("duplicate", "bulk-existing"),
        ("accepted", "bulk-b"),
        ("duplicate", "bulk-a"),
        ("invalid", None),
        ("invalid", "bulk-bad-hook"),
        ("invalid", "bulk-tok"),
        ("accepted", "bulk-c"),
    ]
    assert (data["accepted"], data["duplicate"], data["invalid"]) == (3, 2, 4)
    assert _pointers(results[1]) == ["/1/url"]
    assert _pointers(results[5]) == ["/5"]
    assert _pointers(results[6]) == ["/6/delivery_config/webhook_url"]
    assert _pointers(results[7]) == ["/7/body"]
    assert results[7]["errors"][0]["code"] == "token_limit"
    assert {e["code"] for r in (results[1], results[5], results[6]) for e in r["errors"]} == {
        "validation_error"
    }

    for custom_id in ("bulk-bad-url", "bulk-bad-hook", "bulk-tok"):
        assert fetch_row(db_url, custom_id) is None
    first = fetch_row(db_url, "bulk-a")
    assert first is not None
    assert first["model"] == "gpt-4o-mini"  # the first occurrence in the call wins
    existing = fetch_row(db_url, "bulk-existing")
    assert existing is not None
    assert existing["model"] == "gpt-4o-mini"  # the stored request is untouched
    b = fetch_row(db_url, "bulk-b")
    assert b is not None
    assert b["delivery_config"] == {"type": "rabbitmq", "rabbitmq_queue": "out"}
    c = fetch_row(db_url, "bulk-c")
    assert c is not None
    assert c["endpoint"] == "/v1/chat/completions"
    assert json.loads(c["payload"]) == {
        "custom_id": "bulk-c",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": items[8]["body"],
    }
    assert count_rows(db_url) == 4


def test_bulk_items_are_then_visible_through_get(shared_client: httpx.Client) -> None:
    items = [valid_request(f"bulk-get-{i}") for i in range(3)]
    assert shared_client.post("/api/requests/bulk", json=items).json()["accepted"] == 3
    for i in range(3):
        got = shared_client.get(f"/api/requests/bulk-get-{i}")
        assert got.status_code == 200
        assert got.json()["state"] == "pending"
    # And a later single submission of the same id is a duplicate.
    resp = shared_client.post("/api/requests", json=valid_request("bulk-get-0"))
    assert_error(resp, 409, "duplicate_custom_id", "/custom_id")


def test_ndjson_reports_bad_lines_in_place_and_skips_blank_lines(client: httpx.Client, db_url: str) -> None:
    lines = [
        json.dumps(valid_request("nd-a")),
        "",
        '{"custom_id": "nd-broken", not json',
        "   ",
        json.dumps(
            valid_request(
                "nd-b", url="/v1/embeddings", body={"model": "text-embedding-3-small", "input": "x"}
            )
        ),
        "[1, 2]",
        json.dumps(valid_request("nd-a")),
        json.dumps(without(valid_request("nd-no-body"), "body")),
    ]
    raw = ("\r\n".join(lines[:5]) + "\n" + "\n".join(lines[5:]) + "\n\n").encode()
    resp = client.post("/api/requests/bulk", content=raw, headers=NDJSON)
    assert resp.status_code == 200, resp.text[:500]
    data = resp.json()
    results = _results_ok(data, 6)
    assert [(r["status"], r["custom_id"]) for r in results] == [
        ("accepted", "nd-a"),
        ("invalid", None),
        ("accepted", "nd-b"),
        ("invalid", None),
        ("duplicate", "nd-a"),
        ("invalid", "nd-no-body"),
    ]
    # Indexes count items (non-blank lines), not raw lines.
    assert _pointers(results[1]) == ["/1"]
    assert _pointers(results[3]) == ["/3"]
    assert _pointers(results[5]) == ["/5/body"]
    assert (data["accepted"], data["duplicate"], data["invalid"]) == (2, 1, 3)
    assert fetch_row(db_url, "nd-a") is not None
    nd_b = fetch_row(db_url, "nd-b")
    assert nd_b is not None
    assert nd_b["endpoint"] == "/v1/embeddings"
    assert count_rows(db_url) == 2


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl"])
def test_ndjson_content_types(shared_client: httpx.Client, shared_api: SharedApi, content_type: str) -> None:
    custom_id = f"ct-{content_type.rsplit('/', 1)[1]}"
    raw = json.dumps(valid_request(custom_id)).encode() + b"\n"
    resp = shared_client.post("/api/requests/bulk", content=raw, headers={"content-type": content_type})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"] == [{"status": "accepted", "custom_id": custom_id}]
    assert fetch_row(shared_api.db_url, custom_id) is not None


def test_ten_thousand_items_in_one_call(client: httpx.Client, db_url: str) -> None:
    items = [
        valid_request(f"many-{i:05d}", body={"model": "gpt-4o-mini", "input": f"q{i}"}) for i in range(10_000)
    ]
    resp = client.post("/api/requests/bulk", json=items, timeout=120)
    assert resp.status_code == 200, resp.text[:500]
    data = resp.json()
    results = _results_ok(data, 10_000)
    assert (data["accepted"], data["duplicate"], data["invalid"]) == (10_000, 0, 0)
    assert [r["custom_id"] for r in results] == [f"many-{i:05d}" for i in range(10_000)]
    assert count_rows(db_url) == 10_000
    rows = execute(
        db_url, "SELECT count(DISTINCT custom_id), min(custom_id), max(custom_id) FROM batchman.requests"
    )
    assert rows == [(10_000, "many-00000", "many-09999")]


def test_ten_thousand_items_as_ndjson_with_duplicates_of_stored_rows(
    client: httpx.Client, db_url: str
) -> None:
    stored = client.post(
        "/api/requests/bulk", json=[valid_request(f"nd-many-{i:05d}") for i in range(0, 10_000, 2)]
    )
    assert stored.json()["accepted"] == 5_000
    raw = "\n".join(json.dumps(valid_request(f"nd-many-{i:05d}")) for i in range(10_000)).encode()
    resp = client.post("/api/requests/bulk", content=raw, headers=NDJSON, timeout=120)
    assert resp.status_code == 200, resp.text[:500]
    data = resp.json()
    results = _results_ok(data, 10_000)
    assert (data["accepted"], data["duplicate"], data["invalid"]) == (5_000, 5_000, 0)
    assert [r["status"] for r in results[:4]] == ["duplicate", "accepted", "duplicate", "accepted"]
    assert count_rows(db_url) == 10_000


def test_more_than_bulk_max_items_answers_413_and_stores_nothing(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, bulk_max_items=3, batch_max_bytes=2048) as c:
        resp = c.post("/api/requests/bulk", json=[valid_request(f"tm-{i}") for i in range(4)])
        errors = assert_error(resp, 413, "too_many_items")
        assert "3" in errors[0]["detail"]
        ndjson = "\n".join(json.dumps(valid_request(f"tm-nd-{i}")) for i in range(4)).encode()
        assert_error(c.post("/api/requests/bulk", content=ndjson, headers=NDJSON), 413, "too_many_items")
        assert count_rows(db_url) == 0

        # Exactly the maximum is fine; an item over batch_max_bytes is reported as too_large in place.
        items = [
            valid_request("tm-0"),
            valid_request("tm-big", body={"model": "gpt-4o-mini", "input": "x" * 3000}),
            valid_request("tm-2"),
        ]
        ok = c.post("/api/requests/bulk", json=items)
        assert ok.status_code == 200, ok.text
        data = ok.json()
        results = _results_ok(data, 3)
        assert [r["status"] for r in results] == ["accepted", "too_large", "accepted"]
        assert results[1]["custom_id"] == "tm-big"
        assert results[1]["errors"][0]["code"] == "request_too_large"
        assert _pointers(results[1]) == ["/1"]
        assert (data["accepted"], data["duplicate"], data["invalid"]) == (2, 0, 1)
    assert fetch_row(db_url, "tm-big") is None
    assert count_rows(db_url) == 2


def test_bulk_body_over_bulk_max_body_bytes_answers_413(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, bulk_max_body_bytes=4096) as c:
        items = [valid_request(f"bb-{i}") for i in range(30)]
        assert len(json.dumps(items)) > 4096
        assert_error(c.post("/api/requests/bulk", json=items), 413, "payload_too_large")
    assert count_rows(db_url) == 0


@pytest.mark.parametrize(
    ("raw", "headers", "code"),
    [
        (b"[]", {"content-type": "application/json"}, "validation_error"),
        (b"\n\n  \n", NDJSON, "validation_error"),
        (b"", NDJSON, "validation_error"),
        (
            json.dumps(valid_request("bulk-not-array")).encode(),
            {"content-type": "application/json"},
            "validation_error",
        ),
        (b'"just a string"', {"content-type": "application/json"}, "validation_error"),
        (b"null", {"content-type": "application/json"}, "validation_error"),
        (b"[{]", {"content-type": "application/json"}, "invalid_json"),
        (b"", {"content-type": "application/json"}, "invalid_json"),
    ],
    ids=[
        "empty-array",
        "ndjson-blank-lines",
        "ndjson-empty",
        "object",
        "string",
        "null",
        "bad-json",
        "empty-body",
    ],
)
def test_bulk_body_that_is_not_a_list_of_requests_answers_422(
    shared_client: httpx.Client, shared_api: SharedApi, raw: bytes, headers: dict, code: str
) -> None:
    resp = shared_client.post("/api/requests/bulk", content=raw, headers=headers)
    assert_error(resp, 422, code, "/")
    assert fetch_row(shared_api.db_url, "bulk-not-array") is None


def test_bulk_with_only_invalid_items_stores_nothing(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    items = [valid_request("only-bad-1", method="GET"), {"custom_id": "only-bad-2"}, "text", None, []]
    resp = shared_client.post("/api/requests/bulk", json=items)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    results = _results_ok(data, 5)
    assert (data["accepted"], data["duplicate"], data["invalid"]) == (0, 0, 5)
    assert _pointers(results[0]) == ["/0/method"]
    assert sorted(_pointers(results[1])) == ["/1/body", "/1/delivery_config", "/1/method", "/1/url"]
    assert [_pointers(r) for r in results[2:]] == [["/2"], ["/3"], ["/4"]]
    assert fetch_row(shared_api.db_url, "only-bad-1") is None
    assert fetch_row(shared_api.db_url, "only-bad-2") is None


def test_one_unstorable_item_does_not_fail_the_whole_call(
    shared_client: httpx.Client, shared_api: SharedApi
) -> None:
    """Items the database cannot hold (U+0000) or that break validation are invalid in place, not a 500."""
    items = [
        valid_request("bulk-survivor-1"),
        valid_request("bulk-nul-\u0000"),
        valid_request("bulk-url-list", url=["/v1/responses"]),
        valid_request("bulk-nul-queue", delivery_config={"type": "rabbitmq", "rabbitmq_queue": "q\u0000"}),
        valid_request("bulk-survivor-2"),
    ]
    resp = shared_client.post("/api/requests/bulk", json=items)
    assert resp.status_code == 200, resp.text[:300]
    data = resp.json()
    results = _results_ok(data, 5)
    assert [r["status"] for r in results] == ["accepted", "invalid", "invalid", "invalid", "accepted"]
    assert _pointers(results[2]) == ["/2/url"]
    assert fetch_row(shared_api.db_url, "bulk-survivor-1") is not None
    assert fetch_row(shared_api.db_url, "bulk-survivor-2") is not None
    assert fetch_row(shared_api.db_url, "bulk-url-list") is None
    assert fetch_row(shared_api.db_url, "bulk-nul-queue") is None


def _raw_item(custom_id: bytes, body: bytes = b'{"model":"gpt-4o-mini","input":"hi"}') -> bytes:
    return (
        b'{"custom_id":"%b","url":"/v1/responses","method":"POST","body":%b,'
        b'"delivery_config":{"type":"webhook","webhook_url":"https://e.example.com/h"}}' % (custom_id, body)
    )


def _deep(depth: int, sep: bytes = b"") -> bytes:
    return b'{"model":"gpt-4o-mini","deep":%b}' % ((b"[" + sep) * depth + (b"]" + sep) * depth)


def _bad_items(prefix: str, pretty: bool) -> list[bytes]:
    """Invalid UTF-8 in strings, and bodies nested too deeply; each must be invalid in its place."""
    sep = b"\n" if pretty else b""
    p = prefix.encode()
    return [
        _raw_item(p + b"-utf8-\xff"),
        _raw_item(p + b"-utf8-body", b'{"model":"gpt-4o-mini","input":"\xff"}'),
        _raw_item(p + b"-deep-400", _deep(400, sep)),
        _raw_item(p + b"-deep-5000", _deep(5000)),
        _raw_item(p + b"-deep-5000-pretty", _deep(5000, sep)),
    ]


@pytest.mark.parametrize("ndjson", [False, True], ids=["array", "ndjson"])
def test_undecodable_and_too_deep_items_are_invalid_in_place_and_the_rest_is_stored(
    shared_client: httpx.Client, shared_api: SharedApi, ndjson: bool
) -> None:
    prefix = "nd" if ndjson else "arr"
    bad = _bad_items(f"{prefix}-bad", pretty=not ndjson)  # an NDJSON line cannot hold a line break
    good = [json.dumps(valid_request(f"{prefix}-good-{i}")).encode() for i in range(3)]
    items = [good[0], *bad[:2], good[1], *bad[2:], good[2]]
    if ndjson:
        resp = shared_client.post("/api/requests/bulk", content=b"\n".join(items) + b"\n", headers=NDJSON)
    else:
        raw = b"[\n  " + b",\n  ".join(items) + b"\n]"
        resp = shared_client.post(
            "/api/requests/bulk", content=raw, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 200, resp.text[:500]
    data = resp.json()
    results = _results_ok(data, len(items))
    assert [r["status"] for r in results] == ["accepted", "invalid", "invalid", "accepted"] + [
        "invalid"
    ] * 3 + ["accepted"]
    assert [_pointers(r) for r in results[1:3]] == [["/1"], ["/2"]]
    assert [r["errors"][0]["code"] for r in results[1:3]] == ["invalid_json", "invalid_json"]
    assert _pointers(results[4]) == ["/4/body"]
    assert "nested too deeply" in results[4]["errors"][0]["detail"]
    for r in results[5:7]:
        detail = r["errors"][0]["detail"]
        assert "nested too deeply" in detail or "depth exceeded" in detail, detail
    for i in range(3):
        assert fetch_row(shared_api.db_url, f"{prefix}-good-{i}") is not None
    assert fetch_row(shared_api.db_url, f"{prefix}-bad-utf8-body") is None
    assert fetch_row(shared_api.db_url, f"{prefix}-bad-deep-400") is None


@pytest.mark.parametrize("ndjson", [False, True], ids=["array", "ndjson"])
def test_items_json_or_the_index_cannot_take_are_invalid_in_place_and_the_rest_is_stored(
    shared_client: httpx.Client, shared_api: SharedApi, ndjson: bool
) -> None:
    """A lone surrogate escape, a broken item, a model longer than an index row: each fails alone."""
    p = b"nd-odd" if ndjson else b"arr-odd"
    items = [
        json.dumps(valid_request(f"{p.decode()}-good-0")).encode(),
        _raw_item(p + b"-surrogate", b'{"model":"gpt-4o-mini","input":"\\ud800"}'),
        b'{"custom_id": "' + p + b'-broken", "url": }',
        _raw_item(p + b"-long-model", b'{"model":"%b","input":"hi"}' % (b"m" * 3000)),
        json.dumps(valid_request(f"{p.decode()}-good-1")).encode(),
    ]
    if ndjson:
        resp = shared_client.post("/api/requests/bulk", content=b"\n".join(items), headers=NDJSON)
    else:
        raw = b"[" + b",".join(items) + b"]"
        resp = shared_client.post(
            "/api/requests/bulk", content=raw, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 200, resp.text[:500]
    results = _results_ok(resp.json(), len(items))
    assert [r["status"] for r in results] == ["accepted", "invalid", "invalid", "invalid", "accepted"]
    assert [_pointers(r) for r in results[1:4]] == [["/1"], ["/2"], ["/3/body/model"]]
    for i in range(2):
        assert fetch_row(shared_api.db_url, f"{p.decode()}-good-{i}") is not None
    assert count_rows_like(shared_api.db_url, f"{p.decode()}-%") == 2


def count_rows_like(db_url: str, pattern: str) -> int:
    return execute(db_url, "SELECT count(*) FROM batchman.requests WHERE custom_id LIKE %s", (pattern,))[0][0]


@pytest.mark.parametrize("content_type", ["Application/X-NDJSON", "application/JSONL; charset=UTF-8"])
def test_ndjson_media_type_is_case_insensitive(
    shared_client: httpx.Client, shared_api: SharedApi, content_type: str
) -> None:
    custom_id = f"nd-case-{content_type[:15]}"
    raw = json.dumps(valid_request(custom_id)).encode() + b"\n"
    resp = shared_client.post("/api/requests/bulk", content=raw, headers={"content-type": content_type})
    assert resp.status_code == 200, resp.text[:300]
    assert fetch_row(shared_api.db_url, custom_id) is not None


def test_concurrent_bulk_calls_sharing_custom_ids_store_each_once(shared_api: SharedApi) -> None:
    """Two calls inserting the same ids in opposite orders can deadlock in Postgres: never a 500."""
    for round_ in range(3):
        ids = [f"overlap-{round_}-{i:04d}" for i in range(2000)]
        bodies = [[valid_request(cid) for cid in order] for order in (ids, ids[::-1])]

        def post(body: list, url: str = shared_api.url) -> httpx.Response:
            with http_client(url) as c:
                return c.post("/api/requests/bulk", json=body, timeout=120)

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(post, bodies))
        assert [r.status_code for r in responses] == [200, 200], [r.text[:300] for r in responses]
        statuses: dict[str, list[str]] = {cid: [] for cid in ids}
        for r in responses:
            for item in _results_ok(r.json(), len(ids)):
                statuses[item["custom_id"]].append(item["status"])
        assert all(sorted(s) == ["accepted", "duplicate"] for s in statuses.values())
        assert count_rows_like(shared_api.db_url, f"overlap-{round_}-%") == len(ids)


def test_bulk_array_of_one_too_deep_item_reports_it_invalid(shared_client: httpx.Client) -> None:
    raw = b"[" * 5000 + b"]" * 5000
    resp = shared_client.post("/api/requests/bulk", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text[:300]
    results = _results_ok(resp.json(), 1)
    assert results[0]["status"] == "invalid"
    assert _pointers(results[0]) == ["/0"]


@pytest.mark.parametrize(
    "raw",
    [b'{"a":' * 3000 + b"1" + b"}" * 3000, b"[" * 5000, b"[" * 5000 + b"]" * 5000 + b"x"],
    ids=["deep-object", "unclosed", "trailing-garbage"],
)
def test_bulk_body_nested_too_deeply_and_not_an_array_answers_422(
    shared_client: httpx.Client, raw: bytes
) -> None:
    resp = shared_client.post("/api/requests/bulk", content=raw, headers={"content-type": "application/json"})
    errors = assert_error(resp, 422, "invalid_json", "/")
    assert "depth exceeded" in errors[0]["detail"]


def test_bulk_array_that_is_broken_json_after_a_deep_item_answers_422_invalid_json(
    shared_client: httpx.Client,
) -> None:
    raw = b"[" + _raw_item(b"deep-then-broken", _deep(5000)) + b', {"unterminated": "x]'
    resp = shared_client.post("/api/requests/bulk", content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_json", "/")
