"""Requests for the API: look one up with its delivery attempts, list them, redeliver one.

Submitting requests is ``intake.service.IntakeService``. The store functions here end their own
transactions; this layer turns "nothing found" and "nothing moved" into errors the API reports.
"""

from __future__ import annotations

from typing import Any

import psycopg

from batch_pipeline.admin.errors import NotRedeliverable, RequestNotFound
from batch_pipeline.redaction import masked_delivery_config
from batch_pipeline.store import request_search
from batch_pipeline.store import requests as store
from batch_pipeline.store.requests import RequestFilter

# RequestFilter is the store's query object; the API builds it from here.
__all__ = ["RequestFilter", "get_request", "list_requests", "redeliver_request"]


def _storable(custom_id: str) -> bool:
    """Postgres text cannot hold U+0000: a custom_id with one was never stored, so cannot exist."""
    return "\x00" not in custom_id


async def get_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any]:
    """The request with its delivery attempts (newest first) and its result; RequestNotFound."""
    row = await store.get_request(conn, custom_id) if _storable(custom_id) else None
    if row is None:
        raise RequestNotFound(custom_id)
    return _shown(row)


async def list_requests(
    conn: psycopg.AsyncConnection, flt: RequestFilter, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """Newest first; ``before`` is the last id of the previous page (keyset pagination). A custom_id
    search reads the trigram-indexed search table where it can (``store.request_search``)."""
    if flt.custom_id_contains or flt.search:
        rows = await request_search.search_requests(conn, flt, limit, before)
    else:
        rows = await store.list_requests(conn, flt, limit, before)
    return [_shown(row) for row in rows]


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the API may show it: receiver credentials masked, in it and in its attempts."""
    row["delivery_config"] = masked_delivery_config(row.get("delivery_config"))
    for attempt in row.get("delivery_attempts") or ():
        attempt["delivery_config"] = masked_delivery_config(attempt.get("delivery_config"))
    return row


async def redeliver_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any]:
    """Queue a stored result for delivery again (the delivery sensor picks it up within one interval).

    RequestNotFound, or NotRedeliverable when it has no result yet or its state forbids it.
    """
    if not _storable(custom_id):
        raise RequestNotFound(custom_id)
    row = await store.redeliver_request(conn, custom_id)
    if row is not None:
        return row
    found = await store.get_request(conn, custom_id)
    if found is None:
        raise RequestNotFound(custom_id)
    reason = "it has no result yet" if found["result"] is None else f"it is in state {found['state']}"
    raise NotRedeliverable(f"Request cannot be redelivered: {reason}")
