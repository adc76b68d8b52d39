"""The test databases handed from test to test (tests/databases.py) come back as the template was,
or not at all."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.databases import DatabasePool


@pytest.fixture
def pool(pg_server_url: str, template_db: str) -> Iterator[DatabasePool]:
    """A pool of its own, not the session's: these tests look at what it hands out."""
    own = DatabasePool(pg_server_url, template_db)
    yield own
    own.close()


def _name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_used_database_comes_back_empty_with_its_seed_rows_and_sequences(pool: DatabasePool) -> None:
    url = pool.take()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO batchman.batches (model, endpoint) VALUES ('m', '/v1/embeddings')")
        conn.execute("UPDATE batchman.intake_control SET paused = true")
        conn.execute("DELETE FROM batchman.request_search_progress")
    pool.give_back(url)
    again = pool.take()
    assert again == url  # emptied, not dropped
    with psycopg.connect(again) as conn:
        assert conn.execute("SELECT count(*) FROM batchman.batches").fetchone()[0] == 0
        assert conn.execute("SELECT paused FROM batchman.intake_control").fetchall() == [(False,)]
        assert conn.execute("SELECT count(*) FROM batchman.request_search_progress").fetchone()[0] == 1
        (new_id,) = conn.execute(
            "INSERT INTO batchman.batches (model, endpoint) VALUES ('m', '/v1/embeddings') RETURNING id"
        ).fetchone()
    assert new_id == 1  # as in a database cloned from the template
    pool.give_back(again)


def test_a_database_whose_schema_a_test_changed_is_dropped_not_reused(
    pool: DatabasePool, pg_server_url: str
) -> None:
    url = pool.take()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE public.leftover (id int)")
    held = psycopg.connect(url)  # a connection the test forgot: it is ended, not waited for
    pool.give_back(url)
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    with psycopg.connect(pg_server_url) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_name(url),)).fetchall()
    assert exists == []
    assert pool.take() != url
