"""What the cleanup stage reads and deletes: OpenAI files no longer needed, data past retention.

Every statement re-checks its conditions where it changes rows, so overlapping or crashed cleanup
runs neither delete twice nor leave anything behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

# Keyset paging (id > after): a batch whose files cannot be deleted yet does not hold up the rest.
FILES_PENDING = """
SELECT id, openai_input_file_id, openai_output_file_id, openai_error_file_id FROM batchman.batches
WHERE files_deleted_at IS NULL
  AND coalesce(openai_input_file_id, openai_output_file_id, openai_error_file_id) IS NOT NULL
  AND state = ANY(%(states)s)
  AND id > %(after)s
ORDER BY id LIMIT %(limit)s
"""
MARK_FILES_DELETED = (
    "UPDATE batchman.batches SET files_deleted_at = now() WHERE id = ANY(%s) AND files_deleted_at IS NULL"
)

# Finished batches past retention, counted from completion. updated_at stands in for rows whose
# completion time was never recorded (batches finished before every final state set completed_at).
EXPIRED = """
SELECT id, openai_input_file_id, openai_output_file_id, openai_error_file_id, files_deleted_at
FROM batchman.batches
WHERE state = ANY(%(states)s)
  AND coalesce(completed_at, updated_at) < now() - make_interval(days => %(days)s)
  AND id > %(after)s
ORDER BY id LIMIT %(limit)s
"""
# The same conditions again: a batch redelivered since the SELECT is in flight and stays. Requests,
# their delivery attempts and the batch's transitions go with it (ON DELETE CASCADE).
DELETE_EXPIRED = """
DELETE FROM batchman.batches
WHERE id = ANY(%(ids)s)
  AND state = ANY(%(states)s)
  AND coalesce(completed_at, updated_at) < now() - make_interval(days => %(days)s)
RETURNING id
"""
OLD_WEBHOOK_EVENTS = (
    "DELETE FROM batchman.openai_webhook_events WHERE received_at < now() - interval '7 days'"
)
# The OpenAI call figures are read by /metrics once per new id range; a week covers any API process's
# restart, and Prometheus keeps the history. ~17k rows a day per busy code server otherwise pile up.
OLD_OPENAI_CALLS = "DELETE FROM batchman.openai_calls WHERE flushed_at < now() - interval '7 days'"
EXISTING_IDS = "SELECT id FROM batchman.batches WHERE id = ANY(%s)"


def files_pending(
    conn: psycopg.Connection, states: Sequence[str], after: int, limit: int
) -> list[dict[str, Any]]:
    """Batches in ``states`` whose OpenAI files are not deleted yet, by id after ``after``."""
    return conn.execute(FILES_PENDING, {"states": list(states), "after": after, "limit": limit}).fetchall()


def mark_files_deleted(conn: psycopg.Connection, batch_ids: list[int]) -> None:
    conn.execute(MARK_FILES_DELETED, (batch_ids,))


def expired(
    conn: psycopg.Connection, states: Sequence[str], days: int, after: int, limit: int
) -> list[dict[str, Any]]:
    """Batches in ``states`` finished more than ``days`` ago, by id after ``after``."""
    params = {"states": list(states), "days": days, "after": after, "limit": limit}
    return conn.execute(EXPIRED, params).fetchall()


def delete_expired(
    conn: psycopg.Connection, batch_ids: list[int], states: Sequence[str], days: int
) -> list[int]:
    """Delete those of ``batch_ids`` still expired (with their requests and attempts); their ids."""
    params = {"ids": batch_ids, "states": list(states), "days": days}
    return [r["id"] for r in conn.execute(DELETE_EXPIRED, params).fetchall()]


def delete_old_webhook_events(conn: psycopg.Connection) -> int:
    return conn.execute(OLD_WEBHOOK_EVENTS).rowcount


def delete_old_openai_calls(conn: psycopg.Connection) -> int:
    return conn.execute(OLD_OPENAI_CALLS).rowcount


def existing_batch_ids(conn: psycopg.Connection, batch_ids: list[int]) -> set[int]:
    return {r["id"] for r in conn.execute(EXISTING_IDS, (batch_ids,)).fetchall()}
