"""Housekeeping: delete OpenAI files once results are stored, and local data past retention.

Everything works in bounded chunks, each in its own transaction, and re-checks its conditions in the
statement that changes rows: a run may crash or overlap another at any point and the next run simply
carries on (nothing is done twice, nothing is left behind).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import openai
import psycopg

from batch_pipeline import openai_client as oai
from batch_pipeline.store.transitions import FINISHED

log = logging.getLogger(__name__)

Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

FILE_COLUMNS = ("openai_input_file_id", "openai_output_file_id", "openai_error_file_id")
# Results are stored (or the batch ended): its OpenAI files are no longer needed. Batches still in
# flight keep theirs: OpenAI reads the input file, and the results run still downloads the output.
FILES_NOT_NEEDED = ("ready_to_deliver", "delivering", *FINISHED)
# Largest key Postgres' bigint holds: a longer numeric partition key cannot name a batch.
MAX_BATCH_ID = 2**63 - 1

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
EXISTING_IDS = "SELECT id FROM batchman.batches WHERE id = ANY(%s)"


def _file_ids(row: dict[str, Any]) -> list[str]:
    return [row[k] for k in FILE_COLUMNS if row[k]]


def _delete_files(client: openai.OpenAI, row: dict[str, Any]) -> bool:
    """Delete one batch's OpenAI files; False (logged) when OpenAI could not be asked now."""
    try:
        for file_id in _file_ids(row):
            oai.delete_file(client, file_id)  # already gone counts as deleted
    except openai.APIError as exc:
        log.warning("batch %s: could not delete OpenAI files yet: %s", row["id"], exc)
        return False
    return True


def delete_openai_files(connect: Connect, client: openai.OpenAI, limit: int = 500, chunk: int = 100) -> int:
    """Delete the OpenAI files of batches that no longer need them (at most ``limit`` batches tried
    per call); returns for how many batches they are now gone."""
    done, tried, after = 0, 0, 0
    while tried < limit:
        with connect() as conn:
            params = {"states": list(FILES_NOT_NEEDED), "after": after, "limit": min(chunk, limit - tried)}
            rows = conn.execute(FILES_PENDING, params).fetchall()
        if not rows:
            break
        tried += len(rows)
        after = rows[-1]["id"]
        deleted = [row["id"] for row in rows if _delete_files(client, row)]
        if deleted:
            with connect() as conn:
                conn.execute(MARK_FILES_DELETED, (deleted,))
                conn.commit()
        done += len(deleted)
    return done


def delete_expired(
    connect: Connect,
    retention_days: int,
    client: openai.OpenAI | None = None,
    limit: int = 1000,
    chunk: int = 20,
) -> list[int]:
    """Delete finished batches (with requests and attempts) past retention; returns their ids.

    With a ``client`` (file deletion enabled) a batch's OpenAI files are deleted first, and a batch
    whose files could not be deleted stays for a later run, so no file is ever orphaned at OpenAI.
    Small chunks: one batch may carry 50,000 requests and their attempts, all deleted in one go.
    """
    expired: list[int] = []
    tried, after = 0, 0
    while tried < limit:
        params = {"states": list(FINISHED), "days": retention_days, "after": after}
        with connect() as conn:
            rows = conn.execute(EXPIRED, {**params, "limit": min(chunk, limit - tried)}).fetchall()
        if not rows:
            break
        tried += len(rows)
        after = rows[-1]["id"]
        ready = [
            row["id"]
            for row in rows
            if client is None
            or row["files_deleted_at"] is not None
            or not _file_ids(row)
            or _delete_files(client, row)
        ]
        if not ready:
            continue
        with connect() as conn:
            if client is not None:
                # A row the DELETE below keeps (redelivered meanwhile) still shows its files are gone.
                conn.execute(MARK_FILES_DELETED, (ready,))
            expired += [r["id"] for r in conn.execute(DELETE_EXPIRED, {**params, "ids": ready}).fetchall()]
            conn.commit()
    return expired


def delete_old_webhook_events(connect: Connect) -> int:
    """Forget webhook ids older than OpenAI's redelivery window; returns how many."""
    with connect() as conn:
        deleted = conn.execute(OLD_WEBHOOK_EVENTS).rowcount
        conn.commit()
    return deleted


def _batch_id(key: str) -> int | None:
    """The batch id a partition key names: its canonical decimal form, in bigint range."""
    if not (key.isascii() and key.isdigit()) or str(int(key)) != key or int(key) > MAX_BATCH_ID:
        return None
    return int(key)


def orphan_keys(connect: Connect, keys: Sequence[str]) -> list[str]:
    """The partition keys among ``keys`` that name no batch row (deleted, or never a batch id)."""
    ids = {k: i for k in keys if (i := _batch_id(k)) is not None}
    existing: set[int] = set()
    if ids:
        with connect() as conn:
            existing = {r["id"] for r in conn.execute(EXISTING_IDS, (list(ids.values()),)).fetchall()}
    return [k for k in keys if ids.get(k) not in existing]
