"""Batch queries for the pipeline stages: build the JSONL, capacity, polling, request bulk moves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

import psycopg

GET_BATCH = "SELECT * FROM batchman.batches WHERE id = %s"

# The input file is exactly these lines, in this order (validation errors point at line numbers).
SELECT_BATCH_LINES = """
SELECT payload FROM batchman.requests WHERE batch_id = %s AND state = 'pending' ORDER BY id
"""

# The same lines as raw bytes, one per line, for writing the file without a Python step per row. CSV
# with a delimiter and a quote byte that valid JSON never holds (control bytes must be escaped in
# it): nothing is quoted or escaped, so each output line is the payload as stored. A payload that
# would be quoted anyway (a raw CR/LF, or those bytes, from a row written another way) is detected
# by the quote byte and the caller falls back to SELECT_BATCH_LINES.
COPY_BATCH_LINES = """
COPY (SELECT payload FROM batchman.requests WHERE batch_id = %s AND state = 'pending' ORDER BY id)
TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')
"""
_COPY_QUOTE = b"\x01"
_ROWS_PER_WRITE = 1000

RESERVED_TOKENS = """
SELECT coalesce(sum(estimated_tokens), 0) AS tokens FROM batchman.batches
WHERE model = %s AND state IN ('openai_processing', 'cancelling')
"""

REQUESTS_TO_PROCESSING = """
UPDATE batchman.requests SET state = 'openai_processing', updated_at = now()
WHERE batch_id = %s AND state = 'pending'
"""

REQUESTS_BACK_TO_PENDING = """
UPDATE batchman.requests SET state = 'pending', updated_at = now()
WHERE batch_id = %s AND state = 'openai_processing'
"""

# Waiting batches due for an admission check, oldest first (oldest-fit-first admission).
WAITING_DUE = """
SELECT id, model, estimated_tokens, waiting_since FROM batchman.batches
WHERE state = 'waiting_for_capacity' AND (next_check_at IS NULL OR next_check_at <= now())
ORDER BY waiting_since NULLS LAST, id
LIMIT %s
"""

RESERVED_BY_MODEL = """
SELECT model, sum(estimated_tokens) AS tokens FROM batchman.batches
WHERE state IN ('openai_processing', 'cancelling') AND model = ANY(%s)
GROUP BY model
"""

# Admitted: hand the batch to a new upload run; the run re-checks capacity under the model lock.
ADMIT = """
UPDATE batchman.batches SET launch_count = launch_count + 1, next_check_at = now() + interval '5 minutes',
    updated_at = now()
WHERE id = %s AND state = 'waiting_for_capacity'
RETURNING id, launch_count
"""

# A batch of the model left OpenAI's queue: the batches waiting for its headroom are looked at on the
# next tick instead of at their next 10 s check. One already handed to an upload run (its check set
# minutes ahead by ADMIT) is left alone.
RECHECK_WAITING = """
UPDATE batchman.batches SET next_check_at = now(), updated_at = now()
WHERE model = %(model)s AND state = 'waiting_for_capacity' AND capacity_wait_reason = 'insufficient_headroom'
  AND next_check_at > now() AND next_check_at <= now() + make_interval(secs => %(within)s)
"""

# Batches handed to an upload run, to (re-)emit the run request (idempotent through the run key).
READY_FOR_UPLOAD = """
SELECT id, launch_count FROM batchman.batches WHERE state = 'ready' ORDER BY id LIMIT %s
"""

# A stage run that ended without moving its batch on (its retries spent, or a permanent error in a
# step that cannot fail the batch) leaves it in a working state no sensor looks at. After a while
# without progress the batch gets a new launch; the stages are conditional and reconcile with
# OpenAI, and one run per batch at a time is enforced by the run queue, so an overlap is harmless.
# The batches table holds one row per batch (not per request): no index needed for this scan.
RELAUNCH_STALLED = """
WITH stalled AS (
    SELECT id FROM batchman.batches
    WHERE state = ANY(%(states)s) AND updated_at < now() - make_interval(secs => %(after)s)
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), relaunched AS (
    UPDATE batchman.batches b SET launch_count = b.launch_count + 1, updated_at = now()
    FROM stalled WHERE b.id = stalled.id
    RETURNING b.id, b.launch_count, b.openai_batch_id, b.state
), audit AS (
    INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason)
    SELECT id, state, state, 'relaunched: no progress for ' || %(after)s || ' s' FROM relaunched
)
SELECT id, launch_count, openai_batch_id FROM relaunched
"""
STALLED_AFTER_SECONDS = 900
RELAUNCH_PER_TICK = 20


def relaunch_stalled(conn: psycopg.Connection, states: Sequence[str]) -> list[dict[str, Any]]:
    """Give batches stuck in ``states`` a new launch (see RELAUNCH_STALLED). Commits."""
    rows = conn.execute(
        RELAUNCH_STALLED, {"states": list(states), "after": STALLED_AFTER_SECONDS, "limit": RELAUNCH_PER_TICK}
    ).fetchall()
    conn.commit()
    return rows


POLL_DUE = """
SELECT id, openai_batch_id, state FROM batchman.batches
WHERE state IN ('openai_processing', 'cancelling') AND (next_check_at IS NULL OR next_check_at <= now())
ORDER BY next_check_at NULLS FIRST, id
LIMIT %s
"""

RESULTS_DUE = """
SELECT id, openai_batch_id, launch_count FROM batchman.batches WHERE state = 'openai_completed'
ORDER BY id LIMIT %s
"""

PROGRESS = """
UPDATE batchman.batches SET openai_status = %(status)s, openai_completed = %(completed)s,
    openai_failed = %(failed)s, openai_total = %(total)s,
    next_check_at = now() + make_interval(secs => %(interval)s), updated_at = now()
WHERE id = %(id)s AND state IN ('openai_processing', 'cancelling')
"""

POSTPONE_CHECK = """
UPDATE batchman.batches SET next_check_at = now() + make_interval(secs => %s) WHERE id = %s
"""

# How many times the batch entered 'uploading' (each upload attempt does, first thing).
UPLOAD_ATTEMPTS = """
SELECT count(*) AS n FROM batchman.batch_transitions WHERE batch_id = %s AND to_state = 'uploading'
"""

MARK_CREATING = "UPDATE batchman.batches SET openai_status = 'creating', updated_at = now() WHERE id = %s"

# The OpenAI batch created for a batch cancelled meanwhile: kept for the audit trail.
NOTE_CANCELLED_REMOTE = """
UPDATE batchman.batches SET openai_batch_id = %s, openai_status = 'cancelling', updated_at = now()
WHERE id = %s
"""

ADVISORY_LOCK = "SELECT pg_advisory_lock(hashtext('batchman.capacity:' || %s))"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(hashtext('batchman.capacity:' || %s))"


def get_batch(conn: psycopg.Connection, batch_id: int) -> dict[str, Any] | None:
    return conn.execute(GET_BATCH, (batch_id,)).fetchone()


def ready_for_upload(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    return conn.execute(READY_FOR_UPLOAD, (limit,)).fetchall()


def results_due(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    return conn.execute(RESULTS_DUE, (limit,)).fetchall()


def poll_due(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    return conn.execute(POLL_DUE, (limit,)).fetchall()


def record_progress(
    conn: psycopg.Connection, batch_id: int, status: str, counts: dict[str, int | None], interval: float
) -> None:
    """OpenAI's status and request counts; the next check ``interval`` seconds from now."""
    conn.execute(PROGRESS, {"id": batch_id, "status": status, "interval": interval, **counts})


def postpone_check(conn: psycopg.Connection, batch_id: int, seconds: float) -> None:
    conn.execute(POSTPONE_CHECK, (seconds, batch_id))


def waiting_due(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    return conn.execute(WAITING_DUE, (limit,)).fetchall()


def reserved_by_model(conn: psycopg.Connection, models: list[str]) -> dict[str, int]:
    """Estimated tokens of our batches at OpenAI, per model (models with none are absent)."""
    return {r["model"]: int(r["tokens"]) for r in conn.execute(RESERVED_BY_MODEL, (models,))}


def recheck_waiting(conn: psycopg.Connection, model: str, within_seconds: int) -> int:
    """Waiting batches of ``model`` due for an admission check now (see RECHECK_WAITING); how many."""
    return conn.execute(RECHECK_WAITING, {"model": model, "within": within_seconds}).rowcount


def admit(conn: psycopg.Connection, batch_id: int) -> dict[str, Any] | None:
    """Hand a waiting batch to a new upload run: its id and new launch count, or None if it moved."""
    return conn.execute(ADMIT, (batch_id,)).fetchone()


def upload_attempts(conn: psycopg.Connection, batch_id: int) -> int:
    return int(conn.execute(UPLOAD_ATTEMPTS, (batch_id,)).fetchone()["n"])


def mark_creating(conn: psycopg.Connection, batch_id: int) -> None:
    """The intent stored before ``batches.create``: a re-run looks the batch up at OpenAI first."""
    conn.execute(MARK_CREATING, (batch_id,))


def note_cancelled_remote(conn: psycopg.Connection, batch_id: int, openai_batch_id: str) -> None:
    conn.execute(NOTE_CANCELLED_REMOTE, (openai_batch_id, batch_id))


def requests_to_processing(conn: psycopg.Connection, batch_id: int) -> None:
    conn.execute(REQUESTS_TO_PROCESSING, (batch_id,))


def requests_back_to_pending(conn: psycopg.Connection, batch_id: int) -> None:
    conn.execute(REQUESTS_BACK_TO_PENDING, (batch_id,))


@contextmanager
def capacity_lock(conn: psycopg.Connection, model: str) -> Iterator[None]:
    """One admission per model at a time, across runs and processes (a session advisory lock on an
    autocommit connection, held while the ledger check and the create call run)."""
    conn.execute(ADVISORY_LOCK, (model,))
    try:
        yield
    finally:
        conn.execute(ADVISORY_UNLOCK, (model,))


def iter_batch_lines(conn: psycopg.Connection, batch_id: int) -> Iterator[str]:
    """The batch's JSONL lines through a server-side cursor: constant memory for 50,000 requests."""
    with conn.cursor(name=f"batch_lines_{batch_id}") as cur:
        cur.itersize = 2000
        cur.execute(SELECT_BATCH_LINES, (batch_id,))
        for row in cur:
            yield row["payload"]


def write_batch_lines(conn: psycopg.Connection, batch_id: int, out: BinaryIO) -> int:
    """Write the batch's JSONL to ``out`` straight from COPY (constant memory); the number of lines.

    Falls back to the row-by-row path when a stored payload would not come out verbatim.
    """
    start = out.tell()
    lines = 0
    quoted = False
    pieces: list[bytes] = []

    def put() -> None:
        # Postgres sends one message per row: they are joined, checked and written a thousand at a time.
        nonlocal lines, quoted
        data = b"".join(pieces)
        pieces.clear()
        if quoted or _COPY_QUOTE in data:
            quoted = True  # read to the end (the COPY must finish), then redo it row by row
            return
        out.write(data)
        lines += data.count(b"\n")

    with conn.cursor().copy(COPY_BATCH_LINES, (batch_id,)) as copy:
        for chunk in copy:
            pieces.append(chunk)
            if len(pieces) == _ROWS_PER_WRITE:
                put()
    put()
    if not quoted:
        return lines
    out.seek(start)
    out.truncate()
    lines = 0
    for line in iter_batch_lines(conn, batch_id):
        out.write(line.encode())
        out.write(b"\n")
        lines += 1
    return lines


def reserved_tokens(conn: psycopg.Connection, model: str) -> int:
    return int(conn.execute(RESERVED_TOKENS, (model,)).fetchone()["tokens"])


# One upload run per batch at a time, across processes: a session advisory lock (the two-key form, so
# it never meets the one-key capacity locks) taken without waiting.
TRY_UPLOAD_LOCK = "SELECT pg_try_advisory_lock(hashtext('batchman.upload'), hashtext(%s::text)) AS locked"
UPLOAD_UNLOCK = "SELECT pg_advisory_unlock(hashtext('batchman.upload'), hashtext(%s::text))"


@contextmanager
def upload_lock(conn: psycopg.Connection, batch_id: int) -> Iterator[bool]:
    """True while this session holds the batch's upload lock; False when another run holds it.
    ``conn`` is an autocommit connection kept open for as long as the lock is needed."""
    locked = bool(conn.execute(TRY_UPLOAD_LOCK, (batch_id,)).fetchone()["locked"])
    try:
        yield locked
    finally:
        if locked:
            conn.execute(UPLOAD_UNLOCK, (batch_id,))
