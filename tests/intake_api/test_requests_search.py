"""custom_id substring search: ``GET /api/requests?custom_id_contains=``, served by an index."""

from __future__ import annotations

import psycopg

from tests.intake_api.conftest import serve

FILLER = 20_000  # enough rows that the planner prefers the index to a scan

SEED = """
INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,
                               delivery_config, state)
SELECT 'order-' || md5(i::text) || '-' || i, '/v1/responses', 'gpt-4o-mini', '{}', 2, 1, '{}', 'pending'
FROM generate_series(1, %s) AS i
"""
SPECIAL = ["invoice-2024_Q1%done", "invoice-2024-Q1-done", "INVOICE-2024_q1", "xx", "ab\\cd"]


def seed(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(SEED, (FILLER,))
        for cid in SPECIAL:
            conn.execute(
                "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
                " estimated_tokens, delivery_config, state) VALUES (%s, '/v1/responses', 'gpt-4o', '{}',"
                " 2, 1, '{}', 'delivered')",
                (cid,),
            )
        conn.execute("ANALYZE batchman.requests")


def found(client, **params: str) -> list[str]:
    resp = client.get("/api/requests", params={"limit": 500, **params})
    assert resp.status_code == 200, resp.text
    return [r["custom_id"] for r in resp.json()["data"]]


def test_substring_search_finds_exactly_the_matching_custom_ids(tmp_path, db_url) -> None:
    seed(db_url)
    with serve(tmp_path, db_url) as client:
        # LIKE's wildcards are plain characters here; matching is case-sensitive, as custom_id is.
        assert found(client, custom_id_contains="2024_Q1") == ["invoice-2024_Q1%done"]
        assert found(client, custom_id_contains="Q1%d") == ["invoice-2024_Q1%done"]
        assert sorted(found(client, custom_id_contains="invoice-2024")) == [
            "invoice-2024-Q1-done",
            "invoice-2024_Q1%done",
        ]
        assert found(client, custom_id_contains="b\\c") == ["ab\\cd"]
        assert found(client, custom_id_contains="1%") == ["invoice-2024_Q1%done"]
        assert found(client, custom_id_contains="4_") == ["INVOICE-2024_q1", "invoice-2024_Q1%done"]
        assert found(client, custom_id_contains="xx") == ["xx"]
        assert found(client, custom_id_contains="-99999") == []
        one = found(client, custom_id_contains="-12345")
        assert len(one) == 1 and one[0].endswith("-12345")
        # Combined with the other filters, and the older name `q` is the same filter.
        assert found(client, custom_id_contains="invoice", state="delivered", model="gpt-4o") == [
            "invoice-2024-Q1-done",
            "invoice-2024_Q1%done",
        ]
        assert found(client, q="2024_Q1") == ["invoice-2024_Q1%done"]
        page = client.get("/api/requests", params={"custom_id_contains": "invoice", "limit": 1}).json()
        rest = found(client, custom_id_contains="invoice", before=str(page["next_cursor"]))
        assert [r["custom_id"] for r in page["data"]] + rest == [
            "invoice-2024-Q1-done",
            "invoice-2024_Q1%done",
        ]
