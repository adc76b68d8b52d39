"""The custom_id search table: read by ``search_requests``, filled in the background (migration 0008
says why it exists).

``search_requests`` reads the newest ``RECENT_WINDOW`` ids (and any not yet copied) newest first by
primary key, which answers a common term at once; only when that leaves the page short does it ask
the trigram index for the older ids. Letting the planner choose there walked the primary key when a
term was common overall but clustered far back ("job-05" among 1,000,000 rows: 400,000 rows read,
seconds); the index's cost grows only with the number of matches.

``fill_step`` is one short transaction of the filler (the ``search_index`` sensor calls it in a loop):
it copies the next chunk of requests, in id order, into ``request_search`` and moves the watermark
``searchable_up_to`` that searches trust (``requests.SEARCH_REQUESTS``). Ids are handed out before
their rows commit, so a request may commit after one with a higher id: a chunk's highest id becomes
the watermark only once every transaction that could still hold a lower id has ended, and the band
above the old watermark is read again then, to pick up such late rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from batch_pipeline.store.requests import (
    REQUEST_COLUMNS,
    RequestFilter,
    filter_clauses,
    like_pattern,
    list_query,
)

# Ids read by primary key before the index is asked (about 10 ms of reading at most).
RECENT_WINDOW = 20_000

# Only one filler at a time (two daemons, or a tick overlapping a slow one); an arbitrary constant.
_FILLER_LOCK_ID = 0x5EA2C4
_TRGM_INDEX = "batchman.request_search_custom_id_trgm"

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s) AS locked"

# "settled": none of the transactions that held a write lock on requests just after the last chunk
# was copied is still running (pg_locks lists each running transaction's own virtualxid lock, whatever
# its role). Every transaction that had drawn an id <= filled_up_to and not yet committed was one of
# them: an INSERT or a COPY takes that lock before it draws its first id (a COPY draws ids as rows
# arrive, before it has an xid, so an xid horizon would miss it). Unrelated transactions, in this
# database or another, never hold the filler up.
READ_PROGRESS = """
SELECT p.searchable_up_to, p.filled_up_to, to_regclass(%s) IS NOT NULL AS indexed,
       NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.virtualtransaction = ANY (p.writers)) AS settled
FROM batchman.request_search_progress p
"""

# The band above the watermark, again: rows that committed late, after a higher id was copied.
FILL_BAND = """
INSERT INTO batchman.request_search (id, custom_id)
SELECT id, custom_id FROM batchman.requests WHERE id > %s AND id <= %s
ON CONFLICT (id) DO NOTHING
"""
MARK_SEARCHABLE = """
UPDATE batchman.request_search_progress SET searchable_up_to = filled_up_to, writers = '{}'
"""

# The next chunk in id order (a primary key range read), and its highest id.
FILL_NEXT = """
WITH chunk AS (
    SELECT id, custom_id FROM batchman.requests WHERE id > %s ORDER BY id LIMIT %s
), copied AS (
    INSERT INTO batchman.request_search (id, custom_id) SELECT id, custom_id FROM chunk
    ON CONFLICT (id) DO NOTHING
)
SELECT max(id) AS last_id, count(*) AS rows FROM chunk
"""
# Read after the copy: a transaction that drew an id <= the chunk's last and has not committed still
# holds its lock (one that committed meanwhile is picked up by the band's second read anyway).
MARK_FILLED = """
UPDATE batchman.request_search_progress SET filled_up_to = %s, writers = coalesce((
    SELECT array_agg(DISTINCT l.virtualtransaction) FROM pg_locks l
    WHERE l.locktype = 'relation' AND l.relation = 'batchman.requests'::regclass
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.mode = 'RowExclusiveLock' AND l.granted AND l.pid IS DISTINCT FROM pg_backend_pid()
), '{}')
"""

SEARCH_BOUNDS = """
SELECT p.searchable_up_to, (SELECT coalesce(max(id), 0) FROM batchman.requests) AS newest
FROM batchman.request_search_progress p
"""
# "+ 0": no index order to walk, so the trigram index it is (see the module docstring).
SEARCH_INDEXED = (
    "SELECT " + REQUEST_COLUMNS + " FROM batchman.request_search s JOIN batchman.requests r ON r.id = s.id"
    " WHERE s.id <= %s AND s.custom_id LIKE %s AND {where} ORDER BY s.id + 0 DESC LIMIT %s"
)
# Without other filters the page is cut in the search table, before the join: a term with 100,000
# matches then costs 100,000 index entries, not 100,000 request rows (the first is a third of it).
SEARCH_INDEXED_TERM_ONLY = (
    "SELECT " + REQUEST_COLUMNS + " FROM (SELECT id FROM batchman.request_search"
    " WHERE id <= %s AND custom_id LIKE %s ORDER BY id + 0 DESC LIMIT %s) s"
    " JOIN batchman.requests r ON r.id = s.id ORDER BY r.id DESC"
)

PROGRESS = """
SELECT searchable_up_to, filled_up_to,
       (SELECT coalesce(max(id), 0) FROM batchman.requests) AS newest,
       to_regclass(%s) IS NOT NULL AS indexed
FROM batchman.request_search_progress
"""


@dataclass(frozen=True)
class Step:
    """What one ``fill_step`` did: ``copied`` rows; ``waiting`` when it stopped for older
    transactions to end; ``done`` when nothing is left to copy (or there is no index to fill)."""

    copied: int
    searchable_up_to: int
    waiting: bool = False
    done: bool = False


def fill_step(conn: psycopg.Connection, chunk: int) -> Step:
    """One transaction: settle the previous chunk once its writers have ended, then copy the next.

    ``conn`` is not in autocommit mode; this commits (or rolls back on an error).
    """
    cur = conn.cursor(row_factory=tuple_row)
    with conn.transaction():
        if not cur.execute(TRY_LOCK, (_FILLER_LOCK_ID,)).fetchone()[0]:
            return Step(0, 0, waiting=True)
        searchable, filled, indexed, settled = cur.execute(READ_PROGRESS, (_TRGM_INDEX,)).fetchone()
        if not indexed:
            return Step(0, searchable, done=True)  # no pg_trgm: searches scan requests
        if filled > searchable:
            if not settled:
                return Step(0, searchable, waiting=True)
            cur.execute(FILL_BAND, (searchable, filled))
            cur.execute(MARK_SEARCHABLE)
            searchable = filled
        last_id, rows = cur.execute(FILL_NEXT, (searchable, chunk)).fetchone()
        if last_id is not None:
            cur.execute(MARK_FILLED, (last_id,))
    return Step(rows, searchable, done=last_id is None)


def progress(conn: psycopg.Connection) -> dict[str, int | bool]:
    """The watermarks, the newest request id and whether the trigram index exists (for logs, tests)."""
    cur = conn.cursor(row_factory=tuple_row)
    searchable, filled, newest, indexed = cur.execute(PROGRESS, (_TRGM_INDEX,)).fetchone()
    return {"searchable_up_to": searchable, "filled_up_to": filled, "newest": newest, "indexed": indexed}


def indexed_query(flt: RequestFilter, term: str, limit: int, up_to: int) -> tuple[sql.Composed, list[Any]]:
    """The look-up in the trigram index of ids <= ``up_to`` (tests EXPLAIN it)."""
    clauses, params = filter_clauses(flt)
    if not clauses:
        return sql.SQL(SEARCH_INDEXED_TERM_ONLY).format(), [up_to, like_pattern(term), limit]
    # The clauses are fixed text naming fixed columns; every value is a parameter.
    where = sql.SQL(" AND ").join(sql.SQL(c) for c in clauses)
    return sql.SQL(SEARCH_INDEXED).format(where=where), [up_to, like_pattern(term), *params, limit]


async def search_requests(
    conn: psycopg.AsyncConnection, flt: RequestFilter, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Requests whose custom_id contains ``flt``'s term (and match its other filters), newest first,
    ids below ``before_id``: the newest ids and those not yet copied by primary key, then the index."""
    term = flt.custom_id_contains or flt.search or ""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(SEARCH_BOUNDS)
    bounds = await cur.fetchone() or {"searchable_up_to": 0, "newest": 0}
    top = before_id - 1 if before_id is not None else bounds["newest"]
    # Read by primary key: the recent window, and everything not yet trusted in the index.
    split = max(min(top - RECENT_WINDOW, bounds["searchable_up_to"]), 0)
    query, params = list_query(flt, limit, before_id, after_id=split)
    await cur.execute(query, params)
    rows = await cur.fetchall()
    if len(rows) < limit and split > 0:
        query, params = indexed_query(flt, term, limit - len(rows), split)
        await cur.execute(query, params)
        rows += await cur.fetchall()
    return rows
