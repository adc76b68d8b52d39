"""The pipeline's connections come from a per-process pool (``db.pooled``): reused, handed back as fresh
sessions, replaced when the server closed them, and never shared with a forked child."""

from __future__ import annotations

import os

import psycopg
import pytest

from batch_pipeline import db
from tests.databases import ended_sessions


def _backend(url: str) -> int:
    with db.pooled(url) as conn:
        return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


def test_connections_serve_one_block_after_another(db_url: str) -> None:
    _backend(db_url)
    before = ended_sessions(db_url)
    # The pool hands its idle connections out in turn; with one per block, 50 would have ended.
    assert len({_backend(db_url) for _ in range(50)}) <= 2
    assert ended_sessions(db_url) - before <= 2


def test_a_block_commits_when_it_ends_and_rolls_back_when_it_raises(db_url: str) -> None:
    with db.pooled(db_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pooled_probe (n int)")
        conn.execute("INSERT INTO pooled_probe VALUES (1)")
    with pytest.raises(RuntimeError), db.pooled(db_url) as conn:
        conn.execute("INSERT INTO pooled_probe VALUES (2)")
        raise RuntimeError("the block failed")
    with db.pooled(db_url) as conn:
        assert [r["n"] for r in conn.execute("SELECT n FROM pooled_probe")] == [1]
        conn.execute("DROP TABLE pooled_probe")


def test_the_next_user_gets_a_fresh_session(db_url: str) -> None:
    with db.pooled(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")  # never unlocked, as after a failed step
        conn.execute("SET statement_timeout = 1234")
        conn.execute("CREATE TEMP TABLE leftover (n int)")
        pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    with db.pooled(db_url) as conn, db.pooled(db_url) as other:
        # One of the two is the connection used above, whichever the pool hands out first.
        conn = conn if conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == pid else other
        assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == pid
        assert not conn.autocommit  # as asked by this block, not as the last one left it
        held = conn.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)
        )
        assert held.fetchone()["n"] == 0
        assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "0"
        assert conn.execute("SELECT to_regclass('pg_temp.leftover') AS t").fetchone()["t"] is None


def test_a_connection_the_server_ended_is_replaced(db_url: str) -> None:
    used = {_backend(db_url) for _ in range(4)}
    with psycopg.connect(db_url, autocommit=True) as admin:  # as a server restart would
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(used),))
    assert {_backend(db_url) for _ in range(4)}.isdisjoint(used)


def test_a_forked_child_opens_its_own_connection(db_url: str) -> None:
    parents = {_backend(db_url) for _ in range(4)}
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, str(_backend(db_url)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        in_child = int(pipe.read())
    os.waitpid(child, 0)
    assert in_child not in parents
    # The parent's connections were not disturbed by the child's use or exit.
    assert {_backend(db_url) for _ in range(4)} == parents
