"""Housekeeping: delete OpenAI files once results are stored, and local data past retention."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import openai
import psycopg

from batch_pipeline import openai_client as oai

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

# Results are stored in these states (or the batch ended): its OpenAI files are no longer needed.
FILES_DONE = """
SELECT id, openai_input_file_id, openai_output_file_id, openai_error_file_id FROM batchman.batches
WHERE files_deleted_at IS NULL
  AND coalesce(openai_input_file_id, openai_output_file_id, openai_error_file_id) IS NOT NULL
  AND state IN ('ready_to_deliver', 'delivering', 'delivered', 'partially_delivered', 'delivery_failed',
                'cancelled', 'resubmitted')
ORDER BY id LIMIT %s
"""
MARK_FILES_DELETED = "UPDATE batchman.batches SET files_deleted_at = now() WHERE id = %s"

# Finished batches past retention; requests, attempts and transitions go with them (ON DELETE CASCADE).
EXPIRED_BATCHES = """
DELETE FROM batchman.batches
WHERE id IN (
    SELECT id FROM batchman.batches
    WHERE state IN ('delivered', 'partially_delivered', 'delivery_failed', 'failed', 'cancelled',
                    'resubmitted')
      AND updated_at < now() - make_interval(days => %s)
    ORDER BY id LIMIT %s
)
RETURNING id
"""
OLD_WEBHOOK_EVENTS = (
    "DELETE FROM batchman.openai_webhook_events WHERE received_at < now() - interval '7 days'"
)


def delete_openai_files(connect: Connect, client: openai.OpenAI, limit: int = 200) -> int:
    """Delete the OpenAI files of batches whose results are stored; returns how many batches."""
    with connect() as conn:
        rows = conn.execute(FILES_DONE, (limit,)).fetchall()
    done = 0
    for row in rows:
        ids = [
            row[k]
            for k in ("openai_input_file_id", "openai_output_file_id", "openai_error_file_id")
            if row[k]
        ]
        try:
            for file_id in ids:
                oai.delete_file(client, file_id)
        except openai.APIError as exc:
            log.warning("batch %s: could not delete OpenAI files yet: %s", row["id"], exc)
            continue
        with connect() as conn:
            conn.execute(MARK_FILES_DELETED, (row["id"],))
            conn.commit()
        done += 1
    return done


def delete_expired(connect: Connect, retention_days: int, limit: int = 1000) -> list[int]:
    """Delete finished batches (with their requests) older than the retention; returns their ids."""
    with connect() as conn:
        ids = [r["id"] for r in conn.execute(EXPIRED_BATCHES, (retention_days, limit)).fetchall()]
        conn.execute(OLD_WEBHOOK_EVENTS)
        conn.commit()
    return ids
