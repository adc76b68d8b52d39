"""Batches for the API: list and inspect them; upload now, restart, delete and redeliver them.

Each action is one transaction on the API's pool (a redelivery: the store's own). Every state change
is a conditional transition with an audit row (``store.transitions``): when a sensor or run moved the
batch first, the action sees the state it found and refuses, instead of overwriting it. The actions
change state only; the Dagster sensors do the work at their next tick. Cancelling, the one action that
calls OpenAI, is ``admin.cancel``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg

from batch_pipeline.admin.errors import BatchNotFound, InvalidBatchState, NotRedeliverable
from batch_pipeline.config import Settings
from batch_pipeline.db import connect
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.states import DELIVERABLE, FINISHED, REQUEST_STATES
from batch_pipeline.store import batch_actions as store
from batch_pipeline.store import deliveries
from batch_pipeline.store.batching import BatchLimits, cut_batch, queued_groups
from batch_pipeline.store.model_limits import fetch_overrides_sync

UPLOAD_REASON = "upload now: requested through the API"
# "Upload now" keeps cutting a group until it is empty; past this many batches the group is full
# anyway and the batching sensor carries on.
MAX_CUTS_PER_GROUP = 20


@dataclass(frozen=True)
class BatchFilter:
    """What ``list_batches`` keeps (None: any)."""

    state: str | None = None
    model: str | None = None
    endpoint: str | None = None


# --- reading ------------------------------------------------------------------------------------------


async def list_batches(
    conn: psycopg.AsyncConnection, flt: BatchFilter, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """Summaries, newest first; ``before`` is the last id of the previous page (keyset pagination)."""
    async with conn.transaction():
        return await store.list_batches(
            conn, limit, before, state=flt.state, model=flt.model, endpoint=flt.endpoint
        )


async def get_batch(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """Every column, request counts per state (all states, zeros included) and the transition timeline."""
    async with conn.transaction():
        batch = await store.get_batch_async(conn, batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        counts = dict.fromkeys(REQUEST_STATES, 0)
        counts.update(await store.request_counts(conn, batch_id))
        batch["request_counts"] = counts
        batch["transitions"] = await store.transition_history(conn, batch_id)
    return batch


async def current_state(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """id, state, openai_batch_id and openai_status, in the caller's transaction; BatchNotFound."""
    row = await store.batch_state(conn, batch_id)
    if row is None:
        raise BatchNotFound(batch_id)
    return row


# --- upload now ---------------------------------------------------------------------------------------


async def upload_queued(
    dsn: str, settings: Settings, endpoint: str | None = None, model: str | None = None
) -> list[dict[str, Any]]:
    """Cut batches now from every queued group matching ``endpoint``/``model``, whatever their age.

    The new batches are in 'ready'; the batching sensor launches their upload runs at its next tick.
    The cutter is the batching sensor's own (``store.batching.cut_batch``, sync psycopg), so there is
    one implementation of how a batch is filled; it runs in a worker thread on its own connection.
    """
    limits = BatchLimits.from_settings(settings)
    return await asyncio.to_thread(_cut_now, dsn, limits, endpoint, model)


def _cut_now(dsn: str, limits: BatchLimits, endpoint: str | None, model: str | None) -> list[dict[str, Any]]:
    with connect(dsn) as conn:
        overrides = fetch_overrides_sync(conn)
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
        row = await store.check_capacity_now(conn, batch_id)
        if row is None:
            found = await current_state(conn, batch_id)
            raise InvalidBatchState(batch_id, found["state"], "uploaded now", ("waiting_for_capacity",))
    return row


# --- restart, delete, redeliver -----------------------------------------------------------------------


async def restart_batch(conn: psycopg.AsyncConnection, batch_id: int) -> dict[str, Any]:
    """Put a failed batch's undelivered requests back in the queue; the batch becomes 'resubmitted'."""
    async with conn.transaction():
        # Locked first: the requests must not move unless the batch really is failed, and stays so.
        locked = await store.lock_batch(conn, batch_id)
        if locked is None:
            raise BatchNotFound(batch_id)
        if locked["state"] != "failed":
            raise InvalidBatchState(batch_id, locked["state"], "restarted", ("failed",))
        requeued = await store.requeue_undelivered(conn, batch_id)
        row = await store.mark_resubmitted(
            conn,
            batch_id,
            locked["resubmitted_count"] + requeued,
            f"restarted through the API: {requeued} requests back in the queue",
        )
        assert row is not None  # the row lock above holds the state
    return {"id": batch_id, "state": row["state"], "previous_state": "failed", "requeued_requests": requeued}


async def delete_batch(conn: psycopg.AsyncConnection, batch_id: int) -> None:
    """Delete a finished batch; its requests, their attempts and the transitions cascade."""
    async with conn.transaction():
        if not await store.delete_finished(conn, batch_id):
            found = await current_state(conn, batch_id)
            raise InvalidBatchState(batch_id, found["state"], "deleted", FINISHED)


async def redeliver_batch(conn: psycopg.AsyncConnection, batch_id: int, only: str) -> dict[str, Any]:
    """Make a batch's stored results due again and reopen it to 'delivering' (``only``: failed | all).

    The delivery sensor launches the run within one interval (or launch ``redeliver_job`` for the
    batch's partition in Dagster). NotRedeliverable when the batch has no results yet.
    """
    result = await deliveries.redeliver_batch(conn, batch_id, only)  # commits
    if result is None:
        raise BatchNotFound(batch_id)
    if result["state"] not in DELIVERABLE:
        raise NotRedeliverable(
            f"Batch cannot be redelivered: it is in state {result['state']} and has no results yet"
        )
    return result
