"""The custom_id search table: filled in the background (watermark, late commits, deletes), read through
its trigram index (EXPLAIN), and correct at every stage of filling."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from batch_pipeline.db import connect
from batch_pipeline.defs.search_index import fill
from batch_pipeline.store import request_search
from batch_pipeline.store.requests import RequestFilter


@pytest.fixture(autouse=True)
def no_recent_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id the filler has made searchable is looked up in the index (these tables are small)."""
    monkeypatch.setattr(request_search, "RECENT_WINDOW", 0)


ROWS = 100_000  # enough that the planner prefers the trigram index to a scan of request_search

SEED = """
INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,
                               delivery_config, state)
SELECT 'order-' || md5(i::text) || '-' || i, '/v1/responses', 'gpt-4o-mini', '{}', 2, 1, '{}', 'pending'
FROM generate_series(1, %s) AS i
"""
ONE = """
INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,
                               delivery_config, state)
VALUES (%s, '/v1/responses', 'gpt-4o', '{}', 2, 1, '{}', 'delivered') RETURNING id
"""


def trgm_available(db_url: str) -> bool:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT to_regclass('batchman.request_search_custom_id_trgm')").fetchone()[0]


def search(db_url: str, term: str, limit: int = 500, **filters: object) -> list[str]:
    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            flt = RequestFilter(custom_id_contains=term, **filters)
            rows = await request_search.search_requests(conn, flt, limit, None)
            return [r["custom_id"] for r in rows]

    return asyncio.run(run())


def progress(db_url: str) -> dict:
    with connect(db_url) as conn:
        return request_search.progress(conn)


def copied_ids(db_url: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute("SELECT custom_id FROM batchman.request_search")}


def test_filler_copies_every_request_and_search_is_right_before_during_and_after(db_url: str) -> None:
    if not trgm_available(db_url):
        pytest.skip("pg_trgm is not installed on this server")
    with psycopg.connect(db_url) as conn:
        conn.execute(SEED, (5_000,))
        special = conn.execute(ONE, ("invoice-2024_Q1%done",)).fetchone()[0]
        conn.execute(SEED.replace("'order-'", "'later-'"), (3_000,))
    expected = ["invoice-2024_Q1%done"]
    assert search(db_url, "2024_Q1") == expected  # nothing copied yet: all read by primary key
    assert progress(db_url)["searchable_up_to"] == 0

    with connect(db_url) as conn:
        step = request_search.fill_step(conn, 2_000)
    assert (step.copied, step.searchable_up_to) == (2_000, 0)
    # One chunk copied but not yet trusted: the watermark moves on the next step, not this one.
    assert progress(db_url)["filled_up_to"] > 0 == progress(db_url)["searchable_up_to"]
    assert search(db_url, "2024_Q1") == expected

    with connect(db_url) as conn:
        request_search.fill_step(conn, 4_000)  # settles the first chunk, copies one past `special`
    assert 0 < progress(db_url)["searchable_up_to"] < special < progress(db_url)["filled_up_to"]
    assert search(db_url, "2024_Q1") == expected
    assert search(db_url, "-4999") == ["order-" + _md5(4999) + "-4999"]

    copied, where = fill(lambda: connect(db_url), budget_seconds=30, chunk=2_500)
    assert where["searchable_up_to"] == where["filled_up_to"] == where["newest"]
    assert copied + 6_000 == 8_001
    assert len(copied_ids(db_url)) == 8_001
    assert search(db_url, "2024_Q1") == expected
    assert len(search(db_url, "later-", limit=5000)) == 3_000
    assert search(db_url, "later-", limit=3, state="delivered") == []

    # Page by page across the primary key window and the index: every match once, newest first.
    request_search.RECENT_WINDOW = 700  # the autouse fixture puts it back

    async def pages() -> list[int]:
        seen: list[int] = []
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            while True:
                before = seen[-1] if seen else None
                flt = RequestFilter(custom_id_contains="later-")
                rows = await request_search.search_requests(conn, flt, 400, before)
                seen += [r["id"] for r in rows]
                if len(rows) < 400:
                    return seen

    ids = asyncio.run(pages())
    assert len(ids) == len(set(ids)) == 3_000 and ids == sorted(ids, reverse=True)

    # A deleted request leaves the search table with it (the foreign key cascades).
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM batchman.requests WHERE id = %s", (special,))
    assert "invoice-2024_Q1%done" not in copied_ids(db_url)
    assert search(db_url, "2024_Q1") == []


def _md5(i: int) -> str:
    import hashlib

    return hashlib.md5(str(i).encode()).hexdigest()


def test_a_request_that_commits_after_a_higher_id_is_not_lost(db_url: str) -> None:
    """Ids are drawn before commit: a slow transaction's lower id appears after a copied higher one.
    The watermark waits for it, and the band above the old watermark is read again."""
    if not trgm_available(db_url):
        pytest.skip("pg_trgm is not installed on this server")
    slow = psycopg.connect(db_url)
    try:
        slow.execute(ONE, ("slow-commit-1",))  # drawn first, committed last
        with psycopg.connect(db_url) as conn:
            conn.execute(ONE, ("quick-commit-2",))
        with connect(db_url) as conn:
            first = request_search.fill_step(conn, 100)
            assert first.copied == 1  # only the committed one
            # The slow transaction is still open: the chunk cannot become the watermark yet.
            assert request_search.fill_step(conn, 100).waiting
            assert progress(db_url)["searchable_up_to"] == 0
            assert search(db_url, "slow-commit") == []  # not committed, so nowhere yet
            slow.commit()
            assert search(db_url, "slow-commit") == ["slow-commit-1"]  # read by primary key
            settled = request_search.fill_step(conn, 100)
        assert not settled.waiting and settled.searchable_up_to == progress(db_url)["newest"]
        assert copied_ids(db_url) == {"slow-commit-1", "quick-commit-2"}
        assert search(db_url, "slow-commit") == ["slow-commit-1"]  # now through the index
    finally:
        slow.close()


def test_a_copy_still_reading_its_rows_holds_the_watermark(db_url: str) -> None:
    """A COPY draws ids as rows arrive, before its transaction has an xid (an xid horizon would not
    see it); its lock on requests, held from the start, does."""
    if not trgm_available(db_url):
        pytest.skip("pg_trgm is not installed on this server")
    slow = psycopg.connect(db_url)
    try:
        with slow.cursor().copy(
            "COPY batchman.requests (custom_id, endpoint, model, payload, payload_bytes,"
            " estimated_tokens, delivery_config) FROM STDIN"
        ) as copy:
            # One short row, then the start of a long one, so the server holds the first row (its
            # id drawn, not yet written: no xid) while it waits for the rest of the second.
            copy.write("copy-row-1\t/v1/responses\tm\t{}\t2\t1\t{}\n")
            copy.write("copy-row-2\t/v1/responses\tm\t" + "x" * 200_000)
            with psycopg.connect(db_url) as conn:
                conn.execute(ONE, ("quick-commit-2",))
            with connect(db_url) as conn:
                assert request_search.fill_step(conn, 100).copied == 1
                assert request_search.fill_step(conn, 100).waiting
            copy.write("\t2\t1\t{}\n")
        slow.commit()
        with connect(db_url) as conn:
            request_search.fill_step(conn, 100)
        assert copied_ids(db_url) == {"copy-row-1", "copy-row-2", "quick-commit-2"}
        with psycopg.connect(db_url) as conn:
            ids = dict(conn.execute("SELECT custom_id, id FROM batchman.requests").fetchall())
        assert ids["copy-row-1"] < ids["quick-commit-2"] < ids["copy-row-2"]  # the case meant
    finally:
        slow.close()


def test_search_reads_the_trigram_index(db_url: str) -> None:
    if not trgm_available(db_url):
        pytest.skip("pg_trgm is not installed on this server")
    with psycopg.connect(db_url) as conn:
        conn.execute(SEED, (ROWS,))
    fill(lambda: connect(db_url), budget_seconds=60, chunk=10_000)
    mark = progress(db_url)["searchable_up_to"]
    assert mark == ROWS
    with psycopg.connect(db_url) as conn:
        conn.execute("ANALYZE batchman.requests")
        conn.execute("ANALYZE batchman.request_search")
        for term in ("-12345", "no-such-id"):
            query, params = request_search.indexed_query(RequestFilter(), term, 26, mark)
            plan = "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + query.as_bytes(conn), params))
            assert "request_search_custom_id_trgm" in plan, plan
    assert len(search(db_url, "-12345")) == 1


def test_without_the_index_nothing_is_copied_and_search_still_works(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(SEED, (100,))
        conn.execute("DROP INDEX IF EXISTS batchman.request_search_custom_id_trgm")
    copied, where = fill(lambda: connect(db_url), budget_seconds=5)
    assert (copied, where["indexed"], where["searchable_up_to"]) == (0, False, 0)
    assert search(db_url, "-42") == ["order-" + _md5(42) + "-42"]
