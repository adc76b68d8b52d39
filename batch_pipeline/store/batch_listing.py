"""The UI's batch listing: the API's filters plus a search and a choice of order, keyset-paginated.

The batches table stays small next to requests (one row per up to 50,000 requests), so a search by
substring of model or endpoint may scan it; pages are keyed on id (``created_at`` follows id).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_pipeline.store.batch_actions import SUMMARY_COLUMNS

# {where} and {order} are composed from fixed text by ``list_page``; every value is a parameter.
LIST_PAGE = "SELECT " + SUMMARY_COLUMNS + " FROM batchman.batches WHERE {where} ORDER BY {order} LIMIT %s"
ORDERS = {"newest": sql.SQL("id DESC"), "oldest": sql.SQL("id ASC")}
COUNT_MATCHING = "SELECT count(*) AS n FROM batchman.batches WHERE {where}"


def _where(
    state: str | None, model: str | None, endpoint: str | None, search: str | None
) -> tuple[list[sql.Composable], list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("state", state), ("model", model), ("endpoint", endpoint)):
        if value is not None:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if search:
        escaped = "%" + search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"
        clauses.append(sql.SQL("(model ILIKE %s OR endpoint ILIKE %s)"))
        params += [escaped, escaped]
    return clauses, params


async def list_page(
    conn: psycopg.AsyncConnection,
    *,
    limit: int,
    order: str,
    after_id: int | None,
    state: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    search: str | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` batches in ``order`` (newest | oldest), after ``after_id`` in that order."""
    clauses, params = _where(state, model, endpoint, search)
    if after_id is not None:
        clauses.append(sql.SQL("id < %s" if order == "newest" else "id > %s"))
        params.append(after_id)
    where = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")
    query = sql.SQL(LIST_PAGE).format(where=where, order=ORDERS[order])
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, (*params, limit))
    return await cur.fetchall()


async def count_matching(
    conn: psycopg.AsyncConnection,
    *,
    state: str | None = None,
    model: str | None = None,
    endpoint: str | None = None,
    search: str | None = None,
) -> int:
    clauses, params = _where(state, model, endpoint, search)
    where = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql.SQL(COUNT_MATCHING).format(where=where), params)
    return int((await cur.fetchone())["n"])
