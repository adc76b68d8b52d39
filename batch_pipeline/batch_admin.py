"""Operator actions on batches (list, inspect, upload now, cancel, restart, delete), model-limit
settings and the OpenAI webhook hint, for the intake API.

Async on the API's connection pool; each function is one transaction (the cancel of an in-flight batch
is two, so no transaction stays open across the OpenAI call). Every state change is a conditional
transition with an audit row, the async twin of ``store.transitions.transition``: when a sensor or run
moved the batch first, the action sees it and re-decides instead of overwriting. "Upload now" runs
``store.batching.cut_batch`` (sync, the fill statement the upload runs use) in a worker thread, so
there is one implementation of how a batch is filled. No dagster import: the API must start fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from batch_pipeline.config import Settings
from batch_pipeline.db import connect
from batch_pipeline.model_limits import DEFAULT_TOKEN_LIMITS, FALLBACK_TOKEN_LIMIT, token_limit_for
from batch_pipeline.store import model_limits as limits_store
from batch_pipeline.store.batching import BatchLimits, cut_batch, queued_groups
from batch_pipeline.store.transitions import AT_OPENAI, FINISHED, RECORD_TRANSITION

ALL_BATCH_STATES = (
    "ready", "uploading", "uploaded", "waiting_for_capacity", "openai_processing", "cancelling",
    "openai_completed", "downloading", "ready_to_deliver", "delivering", "delivered",
    "partially_delivered", "delivery_failed", "failed", "cancelled", "resubmitted",
)  # fmt: skip
REQUEST_STATES = (
    "pending", "openai_processing", "openai_processed", "delivering", "delivered", "failed",
    "delivery_failed", "expired", "cancelled",
)  # fmt: skip

# Not at OpenAI yet (or only after a crash between create and our bookkeeping): cancelled right here.
CANCEL_LOCALLY = ("ready", "uploading", "uploaded", "waiting_for_capacity")
# Before a batch reaches OpenAI its requests are pending; openai_processing only after such a crash.
CANCELLABLE_REQUEST_STATES = ("pending", "openai_processing")
# A failed batch's requests whose client has received nothing yet. 'failed' counts only without a
# result: with one, the error line was (or will be) delivered. openai_processed ones go back too,
# because nothing delivers the results of a failed batch and a client must never wait forever.
RESTARTABLE_REQUEST_STATES = ("pending", "openai_processing", "openai_processed", "expired")
# "Upload now" keeps cutting a group until it is empty; past this many batches the group is full
# anyway and the batching sensor carries on.
MAX_CUTS_PER_GROUP = 20
# The SDK retries connection errors, 408, 409, 429 and 5xx; an operator waits for the answer, so few.
SDK_MAX_RETRIES = 2
SDK_TIMEOUT_SECONDS = 30.0
# The key the simulator accepts when no OpenAI key is configured (any bearer token works there).
SIM_KEY_PLACEHOLDER = "sk-simulator"


class BatchNotFound(LookupError):
    def __init__(self, batch_id: int) -> None:
        super().__init__(f"No batch found with id={batch_id}")


class InvalidBatchState(RuntimeError):
    def __init__(self, batch_id: int, state: str, action: str, allowed: Iterable[str]) -> None:
        super().__init__(
            f"Batch {batch_id} cannot be {action}: it is in state {state} (allowed: {', '.join(allowed)})"
        )
        self.state = state


class OpenAICallFailed(RuntimeError):
    """OpenAI (or the network to it) refused an action; nothing was changed on our side."""


# --- reading ------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = """
id, endpoint, model, state, request_count, size_bytes, estimated_tokens, openai_batch_id, openai_status,
openai_completed, openai_failed, openai_total, error_msg, next_check_at, created_at, updated_at, completed_at
"""
# Newest first; keyset pagination on id (``before`` is the last id of the previous page).
LIST_BATCHES = "SELECT " + SUMMARY_COLUMNS + " FROM batchman.batches WHERE {where} ORDER BY id DESC LIMIT %s"
GET_BATCH = "SELECT * FROM batchman.batches WHERE id = %s"
GET_STATE = "SELECT id, state, openai_batch_id, openai_status FROM batchman.batches WHERE id = %s"
LOCK_STATE = "SELECT id, state FROM batchman.batches WHERE id = %s FOR UPDATE"
# Served by the partial index requests_batch_idx (batch_id, state).
REQUEST_COUNTS = "SELECT state, count(*) AS n FROM batchman.requests WHERE batch_id = %s GROUP BY state"
TRANSITIONS = """
SELECT from_state, to_state, reason, transitioned_at FROM batchman.batch_transitions
WHERE batch_id = %s ORDER BY transitioned_at, id
"""


@dataclass(frozen=True)
class BatchFilter:
    state: str | None = None
    model: str | None = None
    endpoint: str | None = None


async def list_batches(
    conn: psycopg.AsyncConnection, flt: BatchFilter, limit: int, before: int | None
) -> list[dict[str, Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("state", flt.state), ("model", flt.model), ("endpoint", flt.endpoint)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if before is not None:
        clauses.append("id < %s")
        params.append(before)
    query = LIST_BATCHES.format(where=" AND ".join(clauses) or "TRUE")
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, (*params, limit))
        return await cur.fetchall()


async def get_batch(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """Every column, request counts per state (all states, zeros included) and the transition timeline."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(GET_BATCH, (batch_id,))
        batch = await cur.fetchone()
        if batch is None:
            raise BatchNotFound(batch_id)
        await cur.execute(REQUEST_COUNTS, (batch_id,))
        counts = {state: 0 for state in REQUEST_STATES}
        counts.update({row["state"]: row["n"] for row in await cur.fetchall()})
        await cur.execute(TRANSITIONS, (batch_id,))
        batch["request_counts"] = counts
        batch["transitions"] = await cur.fetchall()
    return batch


async def _current(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(GET_STATE, (batch_id,))
    row = await cur.fetchone()
    if row is None:
        raise BatchNotFound(batch_id)
    return row


# --- transitions --------------------------------------------------------------------------------------


async def transition(
    conn: psycopg.AsyncConnection,
    batch_id: int,
    from_states: Iterable[str],
    to_state: str,
    reason: str,
    **columns: Any,
) -> dict[str, Any] | None:
    """Async twin of ``store.transitions.transition``: same conditional UPDATE, same audit row.

    Returns the updated row (with ``previous_state``) or None when the batch was not in ``from_states``.
    """
    sets = [sql.SQL("state = %(to_state)s"), sql.SQL("updated_at = now()")]
    params: dict[str, Any] = {"id": batch_id, "from": list(from_states), "to_state": to_state}
    for name, value in columns.items():
        if isinstance(value, sql.Composable):
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), value))
        else:
            sets.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)))
            params[name] = value
    query = sql.SQL(
        "UPDATE batchman.batches b SET {sets} FROM (SELECT id, state AS previous_state FROM batchman.batches"
        " WHERE id = %(id)s AND state = ANY(%(from)s) FOR UPDATE) old"
        " WHERE b.id = old.id RETURNING b.*, old.previous_state"
    ).format(sets=sql.SQL(", ").join(sets))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    row = await cur.fetchone()
    if row is not None and row["previous_state"] != to_state:
        await cur.execute(RECORD_TRANSITION, (batch_id, row["previous_state"], to_state, reason))
    return row


# --- upload now ---------------------------------------------------------------------------------------

UPLOAD_REASON = "upload now: requested through the API"
CHECK_CAPACITY_NOW = """
UPDATE batchman.batches SET next_check_at = now(), updated_at = now()
WHERE id = %s AND state = 'waiting_for_capacity'
RETURNING id, state, next_check_at
"""


def batch_limits(settings: Settings) -> BatchLimits:
    return BatchLimits(
        max_requests=settings.batch_max_requests,
        max_bytes=settings.batch_max_bytes,
        max_age_seconds=settings.batch_max_age_seconds,
    )


async def upload_queued(
    dsn: str, settings: Settings, endpoint: str | None = None, model: str | None = None
) -> list[dict[str, Any]]:
    """Cut batches now from every queued group matching ``endpoint``/``model``, whatever their age.

    The new batches are in 'ready'; the batching sensor launches their upload runs at its next tick.
    """
    return await asyncio.to_thread(_cut_now, dsn, batch_limits(settings), endpoint, model)


def _cut_now(dsn: str, limits: BatchLimits, endpoint: str | None, model: str | None) -> list[dict[str, Any]]:
    with connect(dsn) as conn:
        overrides = limits_store.fetch_overrides_sync(conn)
        if endpoint is not None and model is not None:
            groups = [(endpoint, model)]  # no need to scan for groups; an empty one cuts nothing
        else:
            groups = [
                (g.endpoint, g.model)
                for g in queued_groups(conn, limits)
                if endpoint in (None, g.endpoint) and model in (None, g.model)
            ]
        conn.commit()
        cut: list[dict[str, Any]] = []
        for group_endpoint, group_model in groups:
            token_limit = token_limit_for(group_model, overrides)
            for _ in range(MAX_CUTS_PER_GROUP):
                row = cut_batch(conn, group_endpoint, group_model, limits, token_limit, UPLOAD_REASON)
                if row is None:
                    break
                cut.append({"endpoint": group_endpoint, "model": group_model, **row})
        return cut


async def upload_waiting(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """Make a batch waiting for capacity due now: the next admission check re-admits it if it fits."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(CHECK_CAPACITY_NOW, (batch_id,))
        row = await cur.fetchone()
        if row is None:
            current = await _current(conn, batch_id)
            raise InvalidBatchState(batch_id, current["state"], "uploaded now", ("waiting_for_capacity",))
    return row


# --- cancel -------------------------------------------------------------------------------------------

CANCEL_REQUESTS = """
UPDATE batchman.requests SET state = 'cancelled', updated_at = now()
WHERE batch_id = %s AND state = ANY(%s)
"""
# A batch that moved between our read and our conditional update is re-read this many times.
CANCEL_ATTEMPTS = 3


async def cancel_batch(conn: psycopg.AsyncConnection, settings: Settings, batch_id: int) -> dict[str, Any]:
    """Cancel a batch. At OpenAI: ask OpenAI first, then 'cancelling' (the status sensor collects the
    partial results). Not at OpenAI yet: 'cancelled' with its requests. Already cancelling: no-op.
    """
    for _ in range(CANCEL_ATTEMPTS):
        async with conn.transaction():
            current = await _current(conn, batch_id)
        state, openai_batch_id = current["state"], current["openai_batch_id"]
        if state == "cancelling":
            return {"id": batch_id, "state": state, "previous_state": state, "cancelled_requests": 0}
        if state not in (*CANCEL_LOCALLY, "openai_processing"):
            raise InvalidBatchState(batch_id, state, "cancelled", (*CANCEL_LOCALLY, *AT_OPENAI))
        # A remote batch can exist before 'openai_processing' when a run crashed right after creating it
        # (its id stored, or only the 'creating' intent: then it is found by our id in its metadata).
        if not openai_batch_id and current["openai_status"] == "creating":
            openai_batch_id = await find_at_openai(settings, batch_id)
        found_at_openai = bool(openai_batch_id) and await cancel_at_openai(settings, openai_batch_id)
        moved = 0
        async with conn.transaction():
            if state == "openai_processing":
                reason = "cancel requested through the API" + (
                    "" if found_at_openai else " (unknown at OpenAI)"
                )
                row = await transition(
                    conn,
                    batch_id,
                    ("openai_processing",),
                    "cancelling",
                    reason,
                    next_check_at=sql.SQL("now()"),
                )
            else:
                row = await transition(
                    conn,
                    batch_id,
                    CANCEL_LOCALLY,
                    "cancelled",
                    "cancelled through the API",
                    next_check_at=None,
                    completed_at=sql.SQL("coalesce(completed_at, now())"),
                )
                if row is not None:
                    cur = await conn.execute(CANCEL_REQUESTS, (batch_id, list(CANCELLABLE_REQUEST_STATES)))
                    moved = cur.rowcount
        if row is not None:
            return {
                "id": batch_id,
                "state": row["state"],
                "previous_state": row["previous_state"],
                "cancelled_requests": moved,
            }
    current = await _current(conn, batch_id)
    raise InvalidBatchState(batch_id, current["state"], "cancelled", (*CANCEL_LOCALLY, *AT_OPENAI))


def _client_options(settings: Settings) -> dict[str, Any]:
    """How the API's own OpenAI calls (sync and async clients alike) reach OpenAI or the simulator."""
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else SIM_KEY_PLACEHOLDER
    return {
        "base_url": settings.openai_client_base_url,
        "api_key": api_key,
        "max_retries": SDK_MAX_RETRIES,
        "timeout": SDK_TIMEOUT_SECONDS,
    }


async def find_at_openai(settings: Settings, batch_id: int) -> str | None:
    """The OpenAI batch created for ours by a run that crashed before storing its id, if any."""
    import openai

    from batch_pipeline import openai_client as oai

    def find() -> str | None:
        with openai.OpenAI(**_client_options(settings)) as client:
            remote = oai.find_batch(client, batch_id)
        return remote.id if remote else None

    try:
        return await asyncio.to_thread(find)
    except openai.APIError as exc:
        raise OpenAICallFailed(f"OpenAI could not be asked for batch {batch_id}: {exc}") from exc


async def cancel_at_openai(settings: Settings, openai_batch_id: str) -> bool:
    """``POST /v1/batches/{id}/cancel``. False when OpenAI does not know the batch (nothing to stop)."""
    import openai  # the SDK import is slow; only this action needs it

    async with openai.AsyncOpenAI(**_client_options(settings)) as client:
        try:
            await client.batches.cancel(openai_batch_id)
        except openai.NotFoundError:
            return False
        except openai.APIStatusError as exc:
            raise OpenAICallFailed(
                f"OpenAI refused to cancel batch {openai_batch_id} ({exc.status_code}): {exc.message}"
            ) from exc
        except openai.APIError as exc:  # connection errors and timeouts, after the SDK's retries
            raise OpenAICallFailed(f"OpenAI could not be reached to cancel {openai_batch_id}: {exc}") from exc
    return True


# --- restart and delete -------------------------------------------------------------------------------

REQUEUE_REQUESTS = """
UPDATE batchman.requests
SET state = 'pending', batch_id = NULL, result = NULL, error_msg = NULL, next_attempt_at = NULL,
    claimed_until = NULL, delivery_retries = 0, updated_at = now()
WHERE batch_id = %s AND (state = ANY(%s) OR (state = 'failed' AND result IS NULL))
"""
DELETE_FINISHED = "DELETE FROM batchman.batches WHERE id = %s AND state = ANY(%s) RETURNING id"


async def restart_batch(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """Put a failed batch's undelivered requests back in the queue; the batch becomes 'resubmitted'."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        # Lock first: the requests must not move unless the batch really is failed, and stays so.
        await cur.execute(LOCK_STATE, (batch_id,))
        locked = await cur.fetchone()
        if locked is None:
            raise BatchNotFound(batch_id)
        if locked["state"] != "failed":
            raise InvalidBatchState(batch_id, locked["state"], "restarted", ("failed",))
        await cur.execute(REQUEUE_REQUESTS, (batch_id, list(RESTARTABLE_REQUEST_STATES)))
        requeued = cur.rowcount
        row = await transition(
            conn,
            batch_id,
            ("failed",),
            "resubmitted",
            f"restarted through the API: {requeued} requests back in the queue",
            resubmitted_count=sql.SQL("resubmitted_count + {}").format(sql.Literal(requeued)),
            next_check_at=None,
            completed_at=sql.SQL("coalesce(completed_at, now())"),
        )
        assert row is not None  # the row lock above holds the state
    return {"id": batch_id, "state": row["state"], "previous_state": "failed", "requeued_requests": requeued}


async def delete_batch(conn: psycopg.AsyncConnection, batch_id: int) -> None:
    """Delete a finished batch; its requests, their attempts and the transitions cascade."""
    async with conn.transaction():
        cur = await conn.execute(DELETE_FINISHED, (batch_id, list(FINISHED)))
        if cur.rowcount == 0:
            current = await _current(conn, batch_id)
            raise InvalidBatchState(batch_id, current["state"], "deleted", FINISHED)


# --- model limits -------------------------------------------------------------------------------------

LIST_OVERRIDES = (
    "SELECT model_prefix, token_limit, updated_at FROM batchman.model_limits ORDER BY model_prefix"
)
UPSERT_OVERRIDE = limits_store.UPSERT_OVERRIDE.rstrip() + "\nRETURNING model_prefix, token_limit, updated_at"


async def model_limits(conn: psycopg.AsyncConnection) -> dict[str, Any]:
    """Built-in defaults, operator overrides, the fallback, and what applies to each known prefix."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(LIST_OVERRIDES)
        overrides = await cur.fetchall()
    table = {o["model_prefix"]: o["token_limit"] for o in overrides}
    prefixes = sorted({*DEFAULT_TOKEN_LIMITS, *table})
    return {
        "defaults": [{"model_prefix": p, "token_limit": v} for p, v in sorted(DEFAULT_TOKEN_LIMITS.items())],
        "overrides": overrides,
        "fallback_token_limit": FALLBACK_TOKEN_LIMIT,
        "effective": {p: token_limit_for(p, table) for p in prefixes},
    }


async def put_model_limit(
    conn: psycopg.AsyncConnection, model_prefix: str, token_limit: int
) -> dict[str, Any]:
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(UPSERT_OVERRIDE, (model_prefix, token_limit))
        row = await cur.fetchone()
    assert row is not None
    return row


async def delete_model_limit(conn: psycopg.AsyncConnection, model_prefix: str) -> bool:
    """False when there was no override for ``model_prefix``."""
    async with conn.transaction():
        cur = await conn.execute(limits_store.DELETE_OVERRIDE, (model_prefix,))
        return cur.rowcount > 0


# --- OpenAI webhook -----------------------------------------------------------------------------------

RECORD_WEBHOOK_EVENT = """
INSERT INTO batchman.openai_webhook_events (webhook_id, event_type, openai_batch_id) VALUES (%s, %s, %s)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING webhook_id
"""
# Only batches OpenAI may still be working on are polled; a finished one has nothing more to learn.
POLL_NOW = """
UPDATE batchman.batches SET next_check_at = now(), updated_at = now()
WHERE openai_batch_id = %s AND state = ANY(%s)
RETURNING id
"""


async def record_openai_event(
    conn: psycopg.AsyncConnection, webhook_id: str, event_type: str, openai_batch_id: str | None
) -> tuple[bool, int | None]:
    """Record an OpenAI webhook delivery; for ``batch.*`` make that batch's next status check due now.

    Returns (new, our batch id or None). A redelivered ``webhook-id`` is not new and changes nothing.
    One transaction, so a crash never records an event whose hint was lost.
    """
    async with conn.transaction():
        cur = await conn.execute(RECORD_WEBHOOK_EVENT, (webhook_id, event_type, openai_batch_id))
        if await cur.fetchone() is None:
            return False, None
        if not (event_type.startswith("batch.") and openai_batch_id):
            return True, None
        cur = await conn.execute(POLL_NOW, (openai_batch_id, list(AT_OPENAI)))
        row = await cur.fetchone()
    return True, row[0] if row else None
