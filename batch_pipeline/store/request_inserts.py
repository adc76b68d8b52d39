"""Intake's inserts into ``batchman.requests``: one row, or a bulk COPY with a conflict-safe fallback.

Intake is append-only: one INSERT per request, no counter rows or locks shared between requests,
committed before the API answers 202.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from batch_pipeline.store.records import NewRequest

INSERT_REQUEST = """
INSERT INTO batchman.requests
    (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config, input_count)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (custom_id) DO NOTHING
RETURNING id
"""

EXISTING_CUSTOM_IDS = "SELECT custom_id FROM batchman.requests WHERE custom_id = ANY(%s)"

COPY_COLUMNS = (
    "(custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config, input_count)"
)
COPY_REQUESTS = "COPY batchman.requests " + COPY_COLUMNS + " FROM STDIN"

# Slow path for bulk intake when a concurrent writer raced us on a custom_id. Rows go in custom_id
# order: two such inserts then take their locks in one order and cannot deadlock each other.
CREATE_STAGING = """
CREATE TEMP TABLE requests_staging (LIKE batchman.requests INCLUDING DEFAULTS) ON COMMIT DROP
"""
COPY_STAGING = "COPY requests_staging " + COPY_COLUMNS + " FROM STDIN"
MERGE_STAGING = (
    "INSERT INTO batchman.requests "
    + COPY_COLUMNS
    + """
SELECT custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config, input_count
FROM requests_staging ORDER BY custom_id COLLATE "C"
ON CONFLICT (custom_id) DO NOTHING
RETURNING custom_id
"""
)

# Two bulk calls that share custom_ids can deadlock (each waits for a row the other inserted); the
# one Postgres aborts treats it like a conflict and retries, this many times in all.
CONFLICT_ATTEMPTS = 5
RACE_ERRORS = (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected)


def _row(r: NewRequest) -> tuple:
    return (
        r.custom_id,
        r.url,
        r.model,
        r.payload,
        r.payload_bytes,
        r.estimated_tokens,
        Jsonb(r.delivery_config),
        r.input_count,
    )


async def insert_request(conn: psycopg.AsyncConnection, request: NewRequest) -> bool:
    """Store one request; False when its custom_id already exists. Commits before returning."""
    cur = await conn.execute(INSERT_REQUEST, _row(request))
    inserted = await cur.fetchone() is not None
    await conn.commit()
    return inserted


def copy_row(r: NewRequest) -> tuple:
    return (
        r.custom_id,
        r.url,
        r.model,
        r.payload,
        r.payload_bytes,
        r.estimated_tokens,
        orjson.dumps(r.delivery_config).decode(),
        r.input_count,
    )


async def existing_custom_ids(conn: psycopg.AsyncConnection, custom_ids: Sequence[str]) -> set[str]:
    cur = await conn.execute(EXISTING_CUSTOM_IDS, (list(custom_ids),))
    return {row[0] for row in await cur.fetchall()}


def _copy_text(value: str) -> str:
    """``value`` as a field of COPY's text format, where these four characters would end a field or row."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def _config_field(delivery_config: dict[str, Any]) -> str:
    return _copy_text(orjson.dumps(delivery_config).decode())


def copy_line(r: NewRequest, delivery_config: str | None = None) -> str:
    """One row of ``COPY_REQUESTS`` in COPY's text format, ending in a newline.

    The same row as ``copy_row``, formatted here rather than by psycopg: on the bulk intake path one
    ``write`` per buffer instead of one awaited ``write_row`` per request saves a third of the CPU the
    COPY costs us. ``delivery_config`` is the already formatted JSON field, when the caller has it.
    """
    if delivery_config is None:
        delivery_config = _config_field(r.delivery_config)
    # url needs no escaping: it is one of the supported endpoints.
    return (
        f"{_copy_text(r.custom_id)}\t{r.url}\t{_copy_text(r.model)}\t{_copy_text(r.payload)}\t"
        f"{r.payload_bytes}\t{r.estimated_tokens}\t{delivery_config}\t{r.input_count}\n"
    )


class BulkWriter:
    """COPY rows straight into ``requests`` as they are validated, committing on a clean exit.

    ``add`` buffers a row and says when the buffer is full; ``flush`` then sends it, so Postgres stores
    one buffer while the caller validates the next. A unique violation (one of our custom_ids exists
    already) aborts the COPY; ``raced`` is then True, nothing was stored, and the caller retries
    conflict-safely.
    """

    FLUSH_CHARS = 256 * 1024

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.raced = False
        self._cursor = conn.cursor()
        self._copy_cm = None
        self._copy = None
        self._lines: list[str] = []
        self._buffered = 0
        # Bulk calls usually share one or a few delivery configs: format each once.
        self._configs: dict[tuple[object, ...], str] = {}

    async def __aenter__(self) -> BulkWriter:
        self._copy_cm = self._cursor.copy(COPY_REQUESTS)
        self._copy = await self._copy_cm.__aenter__()
        return self

    def add(self, request: NewRequest) -> bool:
        """Buffer one row; True when the buffer is full and the caller should ``await flush()``."""
        # Values are strings, but for a webhook's ``headers`` (a dict of strings).
        key = tuple(v if isinstance(v, str) else tuple(v.items()) for v in request.delivery_config.values())
        config = self._configs.get(key)
        if config is None:
            config = self._configs[key] = _config_field(request.delivery_config)
        line = copy_line(request, config)
        self._lines.append(line)
        self._buffered += len(line)
        return self._buffered >= self.FLUSH_CHARS

    async def flush(self) -> None:
        lines, self._lines, self._buffered = self._lines, [], 0
        if self.raced or not lines:
            return  # the COPY already failed; the caller redoes everything conflict-safely
        try:
            await self._copy.write("".join(lines))
        except RACE_ERRORS:
            self.raced = True

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None:
                await self.flush()
            await self._copy_cm.__aexit__(exc_type, exc, tb)
        except RACE_ERRORS:
            self.raced = True
        except psycopg.Error:
            if not self.raced and exc_type is None:
                raise
        if exc_type is None and not self.raced:
            await self.conn.commit()
        else:
            await self.conn.rollback()


async def insert_bulk_conflict_safe(
    conn: psycopg.AsyncConnection, requests: Sequence[NewRequest]
) -> set[str]:
    """Insert through a staging table with ON CONFLICT DO NOTHING; return the custom_ids inserted."""
    for _ in range(CONFLICT_ATTEMPTS - 1):
        try:
            return await _insert_through_staging(conn, requests)
        except psycopg.errors.DeadlockDetected:
            # With a concurrent optimistic COPY; ours is rolled back, so the other can finish.
            await conn.rollback()
    return await _insert_through_staging(conn, requests)  # the last attempt raises what it meets


async def _insert_through_staging(conn: psycopg.AsyncConnection, requests: Sequence[NewRequest]) -> set[str]:
    cur = conn.cursor()
    await cur.execute(CREATE_STAGING)
    async with cur.copy(COPY_STAGING) as copy:
        for r in requests:
            await copy.write_row(copy_row(r))
    await cur.execute(MERGE_STAGING)
    inserted = {row[0] for row in await cur.fetchall()}
    await conn.commit()
    return inserted
