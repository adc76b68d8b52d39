"""Housekeeping: delete OpenAI files once results are stored, and local data past retention.

Everything works in bounded chunks, each in its own transaction, and re-checks its conditions in the
statement that changes rows: a run may crash or overlap another at any point and the next run simply
carries on (nothing is done twice, nothing is left behind).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import openai

from batch_pipeline import openai_client as oai
from batch_pipeline.db import Connect
from batch_pipeline.states import FILES_NOT_NEEDED, FINISHED
from batch_pipeline.store import retention as store

log = logging.getLogger(__name__)


FILE_COLUMNS = ("openai_input_file_id", "openai_output_file_id", "openai_error_file_id")
# Largest key Postgres' bigint holds: a longer numeric partition key cannot name a batch.
MAX_BATCH_ID = 2**63 - 1


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
            rows = store.files_pending(conn, FILES_NOT_NEEDED, after, min(chunk, limit - tried))
        if not rows:
            break
        tried += len(rows)
        after = rows[-1]["id"]
        deleted = [row["id"] for row in rows if _delete_files(client, row)]
        if deleted:
            with connect() as conn:
                store.mark_files_deleted(conn, deleted)
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
        with connect() as conn:
            rows = store.expired(conn, FINISHED, retention_days, after, min(chunk, limit - tried))
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
                store.mark_files_deleted(conn, ready)
            expired += store.delete_expired(conn, ready, FINISHED, retention_days)
            conn.commit()
    return expired


def delete_old_webhook_events(connect: Connect) -> int:
    """Forget webhook ids older than OpenAI's redelivery window; returns how many."""
    with connect() as conn:
        deleted = store.delete_old_webhook_events(conn)
        conn.commit()
    return deleted


def delete_old_openai_calls(connect: Connect) -> int:
    """Forget OpenAI call figures older than a week (/metrics has long read them); returns how many."""
    with connect() as conn:
        deleted = store.delete_old_openai_calls(conn)
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
            existing = store.existing_batch_ids(conn, list(ids.values()))
    return [k for k in keys if ids.get(k) not in existing]
