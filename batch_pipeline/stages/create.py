"""Creating the OpenAI batch for an uploaded input file, the second half of the upload stage.

Admission first: one create per model at a time (an advisory lock across runs and processes), and
only while the model's enqueued-token budget has room. ``openai_status = 'creating'`` is stored
before the call; a re-run finds a batch created by a lost call through our id in its ``metadata``
(``openai_client.find_batches``) and adopts it, cancelling any duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import openai
import psycopg
from psycopg import sql

from batch_pipeline import openai_client as oai
from batch_pipeline.db import Connect
from batch_pipeline.states import CREATABLE
from batch_pipeline.store import batches as store
from batch_pipeline.store.transitions import FromNow, transition

log = logging.getLogger(__name__)

# A batch that found no headroom looks again this soon (admission also runs on every sensor tick).
CAPACITY_RECHECK_SECONDS = 10


@dataclass(frozen=True)
class SubmitResult:
    outcome: str  # submitted | waiting_for_capacity | skipped | failed
    detail: str = ""
    openai_batch_id: str | None = None


def create_batch(
    connect: Connect,
    client: openai.OpenAI,
    batch: dict,
    file_id: str,
    token_limit: Callable[[str], int],
    poll_interval_seconds: int,
) -> SubmitResult:
    batch_id, model = batch["id"], batch["model"]
    # One admission per model at a time, across runs and processes: the ledger check and the create
    # call must not interleave with another batch of the same model.
    with connect() as lock_conn:
        lock_conn.autocommit = True
        with store.capacity_lock(lock_conn, model), connect() as conn:
            current = store.get_batch(conn, batch_id)
            if current["state"] not in CREATABLE:
                return SubmitResult("skipped", f"batch is {current['state']}")
            remote, duplicates = None, []
            if current["openai_status"] == "creating":
                # A create call may have succeeded unheard (more than one: it was repeated).
                found = oai.find_batches(client, batch_id, file_id, current["token_limit_retries"])
                if found:
                    remote, duplicates = found[0], found[1:]
                    log.info(
                        "batch %s: adopting OpenAI batch %s created before a lost answer", batch_id, remote.id
                    )
            reason = f"adopted OpenAI batch {remote.id} (its create answer was lost)" if remote else ""
            if remote is None:
                limit = token_limit(model)
                reserved = store.reserved_tokens(conn, model)
                if reserved > 0 and reserved + current["estimated_tokens"] > limit:
                    transition(
                        conn,
                        batch_id,
                        CREATABLE,
                        "waiting_for_capacity",
                        f"insufficient headroom: {reserved} of {limit} tokens reserved for {model}",
                        capacity_wait_reason="insufficient_headroom",
                        waiting_since=sql.SQL("coalesce(waiting_since, now())"),
                        next_check_at=FromNow(seconds=CAPACITY_RECHECK_SECONDS),
                    )
                    conn.commit()
                    return SubmitResult("waiting_for_capacity", f"{reserved}/{limit} tokens reserved")
                store.mark_creating(conn, batch_id)
                conn.commit()
                try:
                    remote = oai.create_batch(
                        client, batch_id, file_id, batch["endpoint"], current["token_limit_retries"]
                    )
                except openai.BadRequestError as exc:
                    if exc.code != "token_limit_exceeded":
                        raise
                    return _refused_for_tokens(conn, batch_id, exc)
                reason = f"created OpenAI batch {remote.id}"
            if duplicates:
                reason += _cancel_duplicates(client, batch_id, duplicates)
            moved = transition(
                conn,
                batch_id,
                CREATABLE,
                "openai_processing",
                reason,
                openai_batch_id=remote.id,
                openai_status=remote.status,
                capacity_wait_reason=None,
                waiting_since=None,
                next_check_at=FromNow(seconds=poll_interval_seconds),
            )
            if moved is None:
                # Cancelled (or deleted) through the API while the create call was in flight:
                # stop the OpenAI batch too, so nothing runs (and bills) unseen.
                conn.rollback()
                try:
                    oai.cancel_batch(client, remote.id)
                except openai.APIStatusError as exc:  # e.g. the API's cancel got there first
                    log.warning("batch %s: cancelling %s at OpenAI: %s", batch_id, remote.id, exc)
                store.note_cancelled_remote(conn, batch_id, remote.id)
                conn.commit()
                return SubmitResult("skipped", f"batch was cancelled; cancelled {remote.id} at OpenAI")
            store.requests_to_processing(conn, batch_id)
            conn.commit()
            return SubmitResult("submitted", openai_batch_id=remote.id)


def _cancel_duplicates(client: openai.OpenAI, batch_id: int, duplicates: list) -> str:
    """Cancel the OpenAI batches that carry our id besides the one we keep; the audit text for them."""
    cancelled, kept_running = [], []
    for duplicate in duplicates:
        try:
            oai.cancel_batch(client, duplicate.id)
        except openai.APIStatusError as exc:
            if oai.is_transient(exc) and exc.status_code != 409:
                raise  # the op's retry finds the duplicates again (the cancelled ones no longer)
            # 409 and the like: it finished meanwhile, nothing is left to stop.
            log.warning("batch %s: cancelling duplicate %s at OpenAI: %s", batch_id, duplicate.id, exc)
            kept_running.append(duplicate.id)
        else:
            log.warning("batch %s: cancelled duplicate OpenAI batch %s", batch_id, duplicate.id)
            cancelled.append(duplicate.id)
    text = f"; cancelled duplicate OpenAI batches {', '.join(cancelled)}" if cancelled else ""
    if kept_running:
        text += f"; could not cancel duplicate OpenAI batches {', '.join(kept_running)}"
    return text


# OpenAI refusing the create call for its token queue costs nothing: wait and try again (as the
# Elixir service does), without spending a token-limit retry (those are for batches failed at OpenAI).
CREATE_REFUSED_RETRY_SECONDS = 60


def _refused_for_tokens(conn: psycopg.Connection, batch_id: int, exc: openai.BadRequestError) -> SubmitResult:
    transition(
        conn,
        batch_id,
        CREATABLE,
        "waiting_for_capacity",
        f"token_limit_exceeded at create: {exc.message}"[:2000],
        openai_status=None,  # no create call is in flight any more
        capacity_wait_reason="token_limit_exceeded",
        waiting_since=sql.SQL("coalesce(waiting_since, now())"),
        next_check_at=FromNow(seconds=CREATE_REFUSED_RETRY_SECONDS),
    )
    conn.commit()
    return SubmitResult("waiting_for_capacity", "OpenAI refused the batch: token_limit_exceeded")
