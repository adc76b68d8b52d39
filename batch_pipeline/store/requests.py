"""Reading requests (one with its attempts, or a filtered page) and queueing one for redelivery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_pipeline.states import REDELIVERABLE_REQUESTS

REQUEST_COLUMNS = """
r.id, r.batch_id, r.custom_id, r.endpoint AS url, r.model, r.state, r.delivery_config, r.error_msg,
r.created_at, r.updated_at, r.payload_bytes AS request_payload_size,
r.delivery_attempt_count, r.next_attempt_at, r.estimated_tokens, r.result
"""

# Newest first; keyset pagination on id. {where} is composed of fixed clauses (``list_requests``).
LIST_REQUESTS = (
    "SELECT " + REQUEST_COLUMNS + " FROM batchman.requests r WHERE {where} ORDER BY r.id DESC LIMIT %s"
)
GET_REQUEST = "SELECT " + REQUEST_COLUMNS + " FROM batchman.requests r WHERE r.custom_id = %s"

GET_ATTEMPTS = """
SELECT id, outcome, error_msg, delivery_config, http_status, duration_ms, attempted_at
FROM batchman.delivery_attempts WHERE request_id = %s
ORDER BY attempted_at DESC, id DESC
"""


REDELIVER = """
UPDATE batchman.requests
SET state = 'openai_processed', next_attempt_at = now(), updated_at = now()
WHERE custom_id = %s AND result IS NOT NULL AND state = ANY(%s)
RETURNING id, custom_id, state
"""


async def get_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any] | None:
    """One request with its delivery attempts (newest first), or None."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(GET_REQUEST, (custom_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    await cur.execute(GET_ATTEMPTS, (row["id"],))
    row["delivery_attempts"] = await cur.fetchall()
    row["delivery_attempt_count"] = len(row["delivery_attempts"])
    return row


@dataclass(frozen=True)
class RequestFilter:
    state: str | None = None
    batch_id: int | None = None
    model: str | None = None
    url: str | None = None
    # Substring of custom_id; ``search`` is the older name of the same filter (either may be given).
    custom_id_contains: str | None = None
    search: str | None = None


async def list_requests(
    conn: psycopg.AsyncConnection, flt: RequestFilter, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on id (``before_id`` is the last id of the previous page)."""
    query, params = list_query(flt, limit, before_id)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


def filter_clauses(flt: RequestFilter) -> tuple[list[str], list[Any]]:
    """The filters other than the custom_id search, as fixed SQL text and their parameters."""
    clauses, params = [], []
    for column, value in (
        ("r.state", flt.state),
        ("r.batch_id", flt.batch_id),
        ("r.model", flt.model),
        ("r.endpoint", flt.url),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    return clauses, params


def like_pattern(term: str) -> str:
    """``term`` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    return "%" + term.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"


def list_query(
    flt: RequestFilter, limit: int, before_id: int | None, after_id: int | None = None
) -> tuple[sql.Composed, list[Any]]:
    """The statement ``list_requests`` runs and its parameters (tests EXPLAIN it): ids below
    ``before_id`` and above ``after_id``, newest first."""
    clauses, params = filter_clauses(flt)
    term = flt.custom_id_contains or flt.search
    if term:
        # A scan newest first that stops at the page's end: what a search reads of the requests
        # not in request_search's trigram index (admin.requests sends searches to store.request_search).
        clauses.append("r.custom_id LIKE %s")
        params.append(like_pattern(term))
    if before_id is not None:
        clauses.append("r.id < %s")
        params.append(before_id)
    if after_id is not None:
        clauses.append("r.id > %s")
        params.append(after_id)
    # The clauses are fixed text naming fixed columns; every value is a parameter.
    where = sql.SQL(" AND ").join(sql.SQL(c) for c in clauses) if clauses else sql.SQL("TRUE")
    return sql.SQL(LIST_REQUESTS).format(where=where), [*params, limit]


async def redeliver_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any] | None:
    """Queue a stored result for delivery again; None when the state or a missing result forbids it."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(REDELIVER, (custom_id, list(REDELIVERABLE_REQUESTS)))
    row = await cur.fetchone()
    await conn.commit()
    return row
