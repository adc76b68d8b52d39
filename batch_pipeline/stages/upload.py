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
from datetime import UTC, datetime
from pathlib import Path

import openai
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from batch_pipeline import openai_client as oai
from batch_pipeline.config import DEFAULT_BATCH_MAX_BYTES
from batch_pipeline.db import Connect
from batch_pipeline.stages.create import SubmitResult, create_batch
from batch_pipeline.states import BEFORE_OPENAI, WAITING_FOR_CREDENTIALS
from batch_pipeline.store import batches as store
from batch_pipeline.store.batching import BatchLimits, fill_batch
from batch_pipeline.store.transitions import FromNow, transition

log = logging.getLogger(__name__)


DEFAULT_LIMITS = BatchLimits(max_requests=50_000, max_bytes=DEFAULT_BATCH_MAX_BYTES, max_age_seconds=3600)


def _write_jsonl(conn: psycopg.Connection, batch_id: int, path: Path) -> int:
    # Straight from COPY into the file: a Python step per row cost about as much as the upload.
    with path.open("wb") as out:
        return store.write_batch_lines(conn, batch_id, out)


def _upload(connect: Connect, client: openai.OpenAI, batch: dict, look_first: bool = True) -> str:
    """The batch's input file id: reuse one uploaded before a crash, else build and upload.

    ``look_first=False``: no earlier upload attempt is recorded for this batch, so no file of it can
    exist and the ``files.list`` walk (up to ten pages of an account's files) is skipped."""
    existing = oai.find_input_file(client, batch["id"]) if look_first else None
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
        # Every upload attempt first moves the batch into 'uploading' (recorded in its transitions):
        # when the move just made is its only one, no earlier run can have uploaded a file for it.
        first_attempt = batch is not None and store.upload_attempts(conn, batch_id) == 1
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
            file_id = _upload(connect, client, batch, look_first=not first_attempt)
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
    return create_batch(connect, client, batch, file_id, token_limit, poll_interval_seconds)


def fail_batch(connect: Connect, batch_id: int, message: str, code: str = "batch_failed") -> None:
    """A permanent error: OpenAI will not take this batch as it is (a 4xx on upload or create).

    Handled like a batch OpenAI failed: the results stage gives every request the error as its result
    line (OpenAI's shape), and delivery sends it, so no client waits forever for a batch nobody will
    run. The message stays on the batch (``error_msg``, and its transitions) for the operator.
    """
    with connect() as conn:
        moved = transition(
            conn,
            batch_id,
            BEFORE_OPENAI,
            "openai_completed",
            message[:2000],
            openai_status="failed",
            error_msg=message[:10_000],
            last_openai_error=Jsonb([{"code": code, "message": message[:2000]}]),
        )
        if moved is not None:
            store.requests_to_processing(conn, batch_id)
        conn.commit()


# How often a batch whose upload OpenAI refused with 401/403 tries again.
CREDENTIALS_RECHECK_MINUTES = 5


def wait_for_credentials(connect: Connect, batch_id: int, message: str) -> None:
    """OpenAI refused our API key (401/403): the batch is fine, the configuration is not. It waits and
    is tried again every few minutes instead of failing its requests; ``/health/ready`` reports it."""
    with connect() as conn:
        transition(
            conn,
            batch_id,
            BEFORE_OPENAI,
            "waiting_for_capacity",
            message[:2000],
            openai_status=None,  # the call was refused: nothing is in flight
            capacity_wait_reason=WAITING_FOR_CREDENTIALS,
            waiting_since=sql.SQL("coalesce(waiting_since, now())"),
            next_check_at=FromNow(minutes=CREDENTIALS_RECHECK_MINUTES),
        )
        conn.commit()
