"""Cancelling a batch: the one operator action that calls OpenAI.

At OpenAI, OpenAI is asked first and the batch then goes to 'cancelling' (the status sensor collects
the partial results and delivers them). Not at OpenAI yet, it is cancelled right here with its
requests. Two transactions with the OpenAI call between them, so none stays open across the call; a
batch that moved in between is read again. The SDK is imported only when a cancel needs it: it is slow
to import, and the API must start fast.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from batch_pipeline.admin.batches import current_state
from batch_pipeline.admin.errors import InvalidBatchState, OpenAICallFailed
from batch_pipeline.config import Settings
from batch_pipeline.states import AT_OPENAI, BEFORE_OPENAI
from batch_pipeline.store import batch_actions as store

# A batch that moved between our read and our conditional update is re-read this many times.
CANCEL_ATTEMPTS = 3
# The SDK retries connection errors, 408, 409, 429 and 5xx; an operator waits for the answer, so few.
SDK_MAX_RETRIES = 2
SDK_TIMEOUT_SECONDS = 30.0


async def cancel_batch(conn: psycopg.AsyncConnection, settings: Settings, batch_id: int) -> dict[str, Any]:
    """Cancel a batch. At OpenAI: ask OpenAI first, then 'cancelling'. Not at OpenAI yet: 'cancelled'
    with its requests. Already cancelling: no-op.
    """
    for _ in range(CANCEL_ATTEMPTS):
        async with conn.transaction():
            found = await current_state(conn, batch_id)
        state, openai_batch_id = found["state"], found["openai_batch_id"]
        if state == "cancelling":
            return {"id": batch_id, "state": state, "previous_state": state, "cancelled_requests": 0}
        if state not in (*BEFORE_OPENAI, "openai_processing"):
            raise InvalidBatchState(batch_id, state, "cancelled", (*BEFORE_OPENAI, *AT_OPENAI))
        # A remote batch can exist before 'openai_processing' when a run crashed right after creating it
        # (its id stored, or only the 'creating' intent: then it is found by our id in its metadata).
        if not openai_batch_id and found["openai_status"] == "creating":
            openai_batch_id = await find_at_openai(settings, batch_id)
        found_at_openai = bool(openai_batch_id) and await cancel_at_openai(settings, openai_batch_id)
        moved = 0
        async with conn.transaction():
            if state == "openai_processing":
                reason = "cancel requested through the API" + (
                    "" if found_at_openai else " (unknown at OpenAI)"
                )
                row = await store.start_cancelling(conn, batch_id, reason)
            else:
                row, moved = await store.cancel_before_openai(conn, batch_id, "cancelled through the API")
        if row is not None:
            return {
                "id": batch_id,
                "state": row["state"],
                "previous_state": row["previous_state"],
                "cancelled_requests": moved,
            }
    found = await current_state(conn, batch_id)
    raise InvalidBatchState(batch_id, found["state"], "cancelled", (*BEFORE_OPENAI, *AT_OPENAI))


async def find_at_openai(settings: Settings, batch_id: int) -> str | None:
    """The OpenAI batch created for ours by a run that crashed before storing its id, if any."""
    import openai

    from batch_pipeline import openai_client as oai

    def find() -> str | None:
        with oai.sync_client(settings, timeout=SDK_TIMEOUT_SECONDS, max_retries=SDK_MAX_RETRIES) as client:
            remote = oai.find_batch(client, batch_id)
        return remote.id if remote else None

    try:
        return await asyncio.to_thread(find)
    except openai.APIError as exc:
        raise OpenAICallFailed(f"OpenAI could not be asked for batch {batch_id}: {exc}") from exc


async def cancel_at_openai(settings: Settings, openai_batch_id: str) -> bool:
    """``POST /v1/batches/{id}/cancel``. False when OpenAI does not know the batch (nothing to stop)."""
    import openai

    from batch_pipeline import openai_client as oai  # imports the SDK

    async with oai.async_client(settings, timeout=SDK_TIMEOUT_SECONDS, max_retries=SDK_MAX_RETRIES) as client:
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
