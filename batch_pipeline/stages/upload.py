"""Submitting one batch to OpenAI: build the JSONL, upload it, create the batch. Crash-safe.

Each remote call is preceded by a stored intent and followed by storing its result, so a re-run
after a crash at any point adopts what exists at OpenAI instead of creating it again:
- the input file is found by its name (``batchman-batch-<id>.jsonl``) when no id was stored;
- ``openai_status = 'creating'`` marks a create call in flight; a re-run then looks the batch up by
  our id in its ``metadata`` before creating one. No batch is ever paid for twice.

The upload and create calls go out once (no SDK retries, see ``openai_client``): when their answer is
lost, the error reaches the op, whose retry finds what the call did by the lookups above. Should more
than one OpenAI batch carry our id (a create repeated by an older build), one is kept and recorded and
the others are cancelled. One run works on a batch at a time (a per-batch lock), so two overlapping
runs never upload the same JSONL twice.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import openai
import psycopg
from psycopg import sql

from batch_pipeline import openai_client as oai
from batch_pipeline.config import DEFAULT_BATCH_MAX_BYTES
from batch_pipeline.db import Connect
from batch_pipeline.states import BEFORE_OPENAI, CREATABLE
from batch_pipeline.store import batches as store
from batch_pipeline.store.batching import BatchLimits, fill_batch
from batch_pipeline.store.transitions import FromNow, transition

log = logging.getLogger(__name__)


# A batch that found no headroom looks again this soon (admission also runs on every sensor tick).
CAPACITY_RECHECK_SECONDS = 10
DEFAULT_LIMITS = BatchLimits(max_requests=50_000, max_bytes=DEFAULT_BATCH_MAX_BYTES, max_age_seconds=3600)


@dataclass(frozen=True)
class SubmitResult:
    outcome: str  # submitted | waiting_for_capacity | skipped | failed
    detail: str = ""
    openai_batch_id: str | None = None


def _write_jsonl(conn: psycopg.Connection, batch_id: int, path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for line in store.iter_batch_lines(conn, batch_id):
            out.write(line)
            out.write("\n")
            count += 1
    return count


def _upload(connect: Connect, client: openai.OpenAI, batch: dict) -> str:
    """The batch's input file id: reuse one uploaded before a crash, else build and upload."""
    existing = oai.find_input_file(client, batch["id"])
    if existing is not None:
        log.info("batch %s: adopting input file %s uploaded before a restart", batch["id"], existing.id)
        uploaded = existing
    else:
        with tempfile.TemporaryDirectory(prefix="batchman-") as tmp:
            path = Path(tmp) / oai.input_file_name(batch["id"])
            with connect() as conn:
                lines = _write_jsonl(conn, batch["id"], path)
            if lines == 0:
                raise EmptyBatch(f"batch {batch['id']} has no pending requests")
            uploaded = oai.upload_input_file(client, batch["id"], path)
    expires = datetime.fromtimestamp(uploaded.expires_at, UTC) if uploaded.expires_at else None
    with connect() as conn:
        transition(
            conn,
            batch["id"],
            ("uploading",),
            "uploaded",
            f"input file {uploaded.id}",
            openai_input_file_id=uploaded.id,
            expires_at=expires,
        )
        conn.commit()
    return uploaded.id


class EmptyBatch(RuntimeError):
    pass


def submit_batch(
    connect: Connect,
    client: openai.OpenAI,
    batch_id: int,
    token_limit: Callable[[str], int],
    poll_interval_seconds: int,
    limits: BatchLimits = DEFAULT_LIMITS,
) -> SubmitResult:
    """Move one batch from ``ready`` to ``openai_processing`` (or ``waiting_for_capacity``).

    A batch the sensor only opened is filled in the same transaction that claims it, so a batch in
    'uploading' always holds its requests. A run that finds another one working on the batch (a
    relaunch overlapping a slow upload) leaves it to that one.
    """
    with connect() as lock_conn:
        lock_conn.autocommit = True
        with store.upload_lock(lock_conn, batch_id) as locked:
            if not locked:
                return SubmitResult("skipped", "another upload run is working on this batch")
            return _submit(connect, client, batch_id, token_limit, poll_interval_seconds, limits)


def _submit(
    connect: Connect,
    client: openai.OpenAI,
    batch_id: int,
    token_limit: Callable[[str], int],
    poll_interval_seconds: int,
    limits: BatchLimits,
) -> SubmitResult:
    with connect() as conn:
        batch = transition(conn, batch_id, ("ready",), "uploading", "upload run started")
        if batch is not None and batch["request_count"] == 0:
            fill_batch(conn, batch, limits, token_limit(batch["model"]))
        batch = store.get_batch(conn, batch_id)
        conn.commit()
    if batch is None:
        return SubmitResult("skipped", "no such batch")
    if batch["state"] not in BEFORE_OPENAI:
        return SubmitResult("skipped", f"batch is {batch['state']}")

    if batch["openai_input_file_id"] is None:
        if batch["state"] != "uploading":
            with connect() as conn:
                transition(conn, batch_id, BEFORE_OPENAI, "uploading", "re-upload: no input file")
                conn.commit()
        try:
            file_id = _upload(connect, client, batch)
        except EmptyBatch as exc:
            with connect() as conn:
                transition(
                    conn, batch_id, BEFORE_OPENAI, "resubmitted", str(exc), completed_at=sql.SQL("now()")
                )
                conn.commit()
            return SubmitResult("skipped", str(exc))
    else:
        file_id = batch["openai_input_file_id"]
        if batch["state"] == "uploading":
            with connect() as conn:
                transition(conn, batch_id, ("uploading",), "uploaded", "input file already stored")
                conn.commit()
    return _create(connect, client, batch, file_id, token_limit, poll_interval_seconds)


def _create(
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
                found = oai.find_batches(client, batch_id)
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
                    remote = oai.create_batch(client, batch_id, file_id, batch["endpoint"])
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


def fail_batch(connect: Connect, batch_id: int, message: str) -> None:
    """A permanent error (e.g. a rejected API key): the batch fails with the message. Its requests
    stay with it; ``POST /api/batches/{id}/restart`` puts them back in the queue once fixed."""
    with connect() as conn:
        transition(
            conn,
            batch_id,
            BEFORE_OPENAI,
            "failed",
            message[:2000],
            error_msg=message[:10_000],
            completed_at=sql.SQL("coalesce(completed_at, now())"),  # retention counts from here
        )
        conn.commit()
