"""What the operator UI's dashboard and batch page show beyond the plain rows: counts per state, hourly
activity, batches in flight, RabbitMQ reachability and the "why waiting?" arithmetic.

The overview is cached per API process and refreshed in the background (``overview``): a dashboard
polls it every few seconds, and however many tabs are open the database answers one round of counts
per interval, an interval that grows with what a round costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from batch_pipeline.config import Settings
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.store import batch_listing
from batch_pipeline.store import dashboard as store
from batch_pipeline.store.model_limits import fetch_overrides

OVERVIEW_TTL_SECONDS = 5.0
# A refresh may take this share of the time at most: counting a million requests takes a second or
# two, and then the counts are refreshed every 10-20 s instead of every 5 s.
OVERVIEW_MAX_BUSY_SHARE = 0.1
# How long a page waits for a first count before it renders without (the live poll fills it in).
OVERVIEW_WAIT_SECONDS = 0.2
IN_FLIGHT_SHOWN = 20
_BROKER_STATUS_TTL_SECONDS = 15.0
_BROKER_CONNECT_TIMEOUT = 1.0


@dataclass
class Cache:
    """One cached value; each app keeps its own (an API process may serve more than one database)."""

    at: float = 0.0
    value: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ttl: float = OVERVIEW_TTL_SECONDS
    refreshing: asyncio.Task | None = None

    def fresh(self, ttl: float) -> bool:
        return bool(self.value) and time.monotonic() - self.at < ttl

    def forget(self) -> None:
        """After an operator action the next page shows its effect at once."""
        self.at = 0.0


async def overview(pool: AsyncConnectionPool, cache: Cache) -> dict[str, Any] | None:
    """Counts per state, the last 24 hours of intake and deliveries, batches in flight.

    Served from the cache; a stale value is served while one background task counts afresh (never
    more than one per process), so no page waits for a count over a million rows. Before the first
    count is in, a page waits ``OVERVIEW_WAIT_SECONDS`` and then gets None (it shows "counting").
    """
    if cache.fresh(cache.ttl):
        return cache.value
    if cache.refreshing is None or cache.refreshing.done():
        cache.refreshing = asyncio.create_task(_refresh(pool, cache))
    if cache.value:
        return cache.value
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(cache.refreshing), OVERVIEW_WAIT_SECONDS)
    return cache.value or None


async def _refresh(pool: AsyncConnectionPool, cache: Cache) -> None:
    started = time.monotonic()
    async with pool.connection() as conn, conn.transaction():
        value = {
            "requests": await store.request_state_counts(conn),
            "batches": await store.batch_state_counts(conn),
            "in_flight": await store.in_flight(conn, IN_FLIGHT_SHOWN),
            "intake_per_hour": _hourly(await store.intake_per_hour(conn), "n"),
            "deliveries": await store.deliveries_per_hour(conn),
        }
    hours = value.pop("deliveries")
    value["deliveries_per_hour"] = _hourly(hours, "ok")
    attempts = sum(h["n"] for h in hours)
    value["delivery_success_rate"] = sum(h["ok"] for h in hours) / attempts if attempts else None
    value["delivery_attempts_24h"] = attempts
    value["as_of"] = datetime.now(UTC)
    took = time.monotonic() - started
    value["took_seconds"] = took
    cache.ttl = max(OVERVIEW_TTL_SECONDS, took / OVERVIEW_MAX_BUSY_SHARE)
    cache.at, cache.value = time.monotonic(), value


def _hourly(rows: list[dict[str, Any]], key: str) -> list[tuple[datetime, int]]:
    """24 hourly buckets ending with the current hour, zeros where nothing happened."""
    by_hour = {r["hour"]: int(r[key]) for r in rows}
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours = [now - timedelta(hours=h) for h in range(23, -1, -1)]
    return [(h, by_hour.get(h, 0)) for h in hours]


async def rabbitmq_status(settings: Settings, cache: Cache) -> dict[str, Any]:
    """Configured or not, where (credentials stripped), and whether its port answers (cached)."""
    if not settings.rabbitmq_url:
        return {"configured": False, "status": "not configured", "where": None,
                "input_queue": settings.rabbitmq_input_queue}  # fmt: skip
    parts = urlsplit(settings.rabbitmq_url)
    host, port = parts.hostname or "localhost", parts.port or (5671 if parts.scheme == "amqps" else 5672)
    async with cache.lock:
        if not cache.fresh(_BROKER_STATUS_TTL_SECONDS):
            try:
                async with asyncio.timeout(_BROKER_CONNECT_TIMEOUT):
                    _, writer = await asyncio.open_connection(host, port)
                writer.close()
                status = "reachable"
            except (OSError, TimeoutError):
                status = "unreachable"
            cache.at, cache.value = time.monotonic(), {"status": status}
    return {"configured": True, "status": cache.value["status"], "where": f"{host}:{port}",
            "input_queue": settings.rabbitmq_input_queue}  # fmt: skip


async def why_waiting(conn: psycopg.AsyncConnection, batch: dict[str, Any]) -> dict[str, Any] | None:
    """Why a batch in waiting_for_capacity waits: OpenAI's token-limit backoff, our key refused, or the
    admission arithmetic (tokens already at OpenAI for its model + its own estimate > the limit)."""
    if batch["state"] != "waiting_for_capacity":
        return None
    reason = batch.get("capacity_wait_reason")
    async with conn.transaction():
        overrides = await fetch_overrides(conn)
        reserved = await store.reserved_at_openai(conn, batch["model"], batch["id"])
    limit = token_limit_for(batch["model"], overrides)
    return {
        "reason": reason,
        "backoff": bool(reason and reason.startswith("token_limit_exceeded")),
        "retries": batch.get("token_limit_retries") or 0,
        "next_check_at": batch.get("next_check_at"),
        "waiting_since": batch.get("waiting_since"),
        "reserved_tokens": reserved["tokens"],
        "reserved_batches": reserved["batches"],
        "token_limit": limit,
        "estimate": int(batch.get("estimated_tokens") or 0),
        "headroom": limit - reserved["tokens"],
    }


async def batch_page(
    conn: psycopg.AsyncConnection, flt: dict[str, str | None], order: str, limit: int, after_id: int | None
) -> tuple[list[dict[str, Any]], int]:
    """One page of the UI's batch listing (``limit + 1`` rows tell whether a next page exists) and
    how many batches match the filters in all."""
    async with conn.transaction():
        rows = await batch_listing.list_page(conn, limit=limit, order=order, after_id=after_id, **flt)
        total = await batch_listing.count_matching(conn, **flt)
    return rows, total


async def request_payload(conn: psycopg.AsyncConnection, request_id: int) -> str | None:
    """The JSONL line sent to OpenAI for a request (None: no such request)."""
    async with conn.transaction():
        return await store.request_payload(conn, request_id)
