"""Polling OpenAI for the batches we have there, and acting on what it says.

Statuses ``validating``/``in_progress``/``finalizing``/``cancelling`` record progress and schedule the
next check. ``failed`` with ``token_limit_exceeded`` is not a failure of the requests: the batch waits
(5, 10, 20, 40, 80 min by default) and goes again with the same input file. Every other terminal
status (``completed``, ``failed``, ``expired``, ``cancelled``) hands the batch to the results stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import openai
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from batch_pipeline import openai_client as oai
from batch_pipeline.db import Connect
from batch_pipeline.stages.capacity import token_limit_backoff_minutes
from batch_pipeline.stages.create import CAPACITY_RECHECK_SECONDS
from batch_pipeline.states import AT_OPENAI
from batch_pipeline.store import batches as store
from batch_pipeline.store.transitions import FromNow, transition

log = logging.getLogger(__name__)


IN_FLIGHT = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class PollSettings:
    interval_seconds: int
    token_limit_backoff: tuple[float, ...]


def _usage(batch: openai.types.Batch) -> dict[str, int | None]:
    usage = batch.usage
    if usage is None:  # batches created before usage existed, and simulators, may omit it
        return {"input_tokens": None, "cached_tokens": None, "output_tokens": None, "reasoning_tokens": None}
    return {
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.input_tokens_details.cached_tokens if usage.input_tokens_details else None,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.output_tokens_details.reasoning_tokens
        if usage.output_tokens_details
        else None,
    }


def _counts(batch: openai.types.Batch) -> dict[str, int | None]:
    rc = batch.request_counts
    return {
        "completed": rc.completed if rc else None,
        "failed": rc.failed if rc else None,
        "total": rc.total if rc else None,
    }


def apply_status(
    conn: psycopg.Connection, batch_id: int, remote: openai.types.Batch, settings: PollSettings
) -> str:
    """Record what OpenAI said about one batch; returns 'in_flight', 'backoff', 'failed' or 'results'."""
    counts = _counts(remote)
    if remote.status in IN_FLIGHT:
        store.record_progress(conn, batch_id, remote.status, counts, settings.interval_seconds)
        return "in_flight"
    errors = oai.batch_errors(remote)
    if remote.status == "failed" and any(e.get("code") == "token_limit_exceeded" for e in errors):
        return _token_limit_backoff(conn, batch_id, errors, settings)
    moved = transition(
        conn,
        batch_id,
        AT_OPENAI,
        "openai_completed",
        f"OpenAI status {remote.status}",
        openai_status=remote.status,
        openai_output_file_id=remote.output_file_id,
        openai_error_file_id=remote.error_file_id,
        openai_completed=counts["completed"],
        openai_failed=counts["failed"],
        openai_total=counts["total"],
        last_openai_error=Jsonb(errors) if errors else None,
        **_usage(remote),
    )
    if moved is not None:  # its tokens left the model's queue: waiting batches may fit now
        store.recheck_waiting(conn, moved["model"], CAPACITY_RECHECK_SECONDS)
    return "results"


def _token_limit_backoff(
    conn: psycopg.Connection, batch_id: int, errors: list, settings: PollSettings
) -> str:
    batch = store.get_batch(conn, batch_id)
    wait = token_limit_backoff_minutes(batch["token_limit_retries"], settings.token_limit_backoff)
    if wait is None:
        message = (
            f"OpenAI token limit retries exhausted after {batch['token_limit_retries']} attempts: "
            f"{errors[0].get('message')}"
        )
        # The results stage turns this into a delivered error for every request of the batch.
        transition(
            conn,
            batch_id,
            AT_OPENAI,
            "openai_completed",
            message[:2000],
            openai_status="failed",
            error_msg=message,
            last_openai_error=Jsonb(errors),
        )
        return "results"
    transition(
        conn,
        batch_id,
        AT_OPENAI,
        "waiting_for_capacity",
        f"token_limit_exceeded: retry {batch['token_limit_retries'] + 1} in {wait:g} min",
        openai_batch_id=None,
        openai_status=None,
        token_limit_retries=batch["token_limit_retries"] + 1,
        capacity_wait_reason="token_limit_exceeded_backoff",
        waiting_since=sql.SQL("coalesce(waiting_since, now())"),
        next_check_at=FromNow(minutes=wait),
        last_openai_error=Jsonb(errors),
    )
    store.requests_back_to_pending(conn, batch_id)
    return "backoff"


def poll_due(
    connect: Connect,
    client: openai.OpenAI,
    settings: PollSettings,
    limit: int,
    budget_seconds: float = float("inf"),
) -> list[int]:
    """Check up to ``limit`` batches due for a poll, stopping once ``budget_seconds`` are spent
    (the rest stay due for the next call); returns the ids now ready for their results run."""
    ready = []
    deadline = time.monotonic() + budget_seconds
    with connect() as conn:
        due = store.poll_due(conn, limit)
    for done, row in enumerate(due):
        if time.monotonic() >= deadline:
            log.warning("status checks: time budget spent, %d batches left for later", len(due) - done)
            break
        try:
            remote = client.batches.retrieve(row["openai_batch_id"])
        except openai.APIError as exc:
            # One unreachable batch must not stall the others; it is retried at the next interval.
            log.warning("batch %s: status check failed: %s", row["id"], exc)
            with connect() as conn:
                store.postpone_check(conn, row["id"], settings.interval_seconds)
                conn.commit()
            continue
        with connect() as conn:
            outcome = apply_status(conn, row["id"], remote, settings)
            conn.commit()
        if outcome == "results":
            ready.append(row["id"])
    return ready
