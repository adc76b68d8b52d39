"""Requests: intake inserts, lookups, listing and redelivery (async, used by the intake API).

Intake is append-only: one INSERT per request, no counter rows or locks shared between requests,
committed before the API answers 202.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from batch_pipeline.states import REDELIVERABLE_REQUESTS
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

REQUEST_COLUMNS = """
r.id, r.batch_id, r.custom_id, r.endpoint AS url, r.model, r.state, r.delivery_config, r.error_msg,
r.created_at, r.updated_at, r.payload_bytes AS request_payload_size,
r.delivery_attempt_count, r.next_attempt_at, r.estimated_tokens, r.result
"""

# Newest first; keyset pagination on id. {where} is composed of fixed clauses (``list_requests``).
LIST_REQUESTS = (
    "SELECT " + REQUEST_COLUMNS + " FROM batchman.requests r WHERE {where} ORDER BY r.id DESC LIMIT %s"
)
GET_REQUEST = "SELECT " + REQUEST_COLUMNS + " FROM batchman.requests r WHERE r.custom_id = %s"

GET_ATTEMPTS = """
SELECT id, outcome, error_msg, delivery_config, http_status, duration_ms, attempted_at
FROM batchman.delivery_attempts WHERE request_id = %s
ORDER BY attempted_at DESC, id DESC
"""


REDELIVER = """
UPDATE batchman.requests
SET state = 'openai_processed', next_attempt_at = now(), updated_at = now()
WHERE custom_id = %s AND result IS NOT NULL AND state = ANY(%s)
RETURNING id, custom_id, state
"""


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


def _config_field(delivery_config: dict[str, str]) -> str:
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
        self._configs: dict[tuple[str, ...], str] = {}

    async def __aenter__(self) -> BulkWriter:
        self._copy_cm = self._cursor.copy(COPY_REQUESTS)
        self._copy = await self._copy_cm.__aenter__()
        return self

    def add(self, request: NewRequest) -> bool:
        """Buffer one row; True when the buffer is full and the caller should ``await flush()``."""
        key = tuple(request.delivery_config.values())
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


async def get_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any] | None:
    """One request with its delivery attempts (newest first), or None."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(GET_REQUEST, (custom_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    await cur.execute(GET_ATTEMPTS, (row["id"],))
    row["delivery_attempts"] = await cur.fetchall()
    row["delivery_attempt_count"] = len(row["delivery_attempts"])
    return row


@dataclass(frozen=True)
class RequestFilter:
    state: str | None = None
    batch_id: int | None = None
    model: str | None = None
    url: str | None = None
    search: str | None = None


async def list_requests(
    conn: psycopg.AsyncConnection, flt: RequestFilter, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Newest first, keyset-paginated on id (``before_id`` is the last id of the previous page)."""
    clauses, params = [], []
    for column, value in (
        ("r.state", flt.state),
        ("r.batch_id", flt.batch_id),
        ("r.model", flt.model),
        ("r.endpoint", flt.url),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if flt.search:
        clauses.append("r.custom_id LIKE %s")
        params.append("%" + flt.search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%")
    if before_id is not None:
        clauses.append("r.id < %s")
        params.append(before_id)
    # The clauses are fixed text naming fixed columns; every value is a parameter.
    where = sql.SQL(" AND ").join(sql.SQL(c) for c in clauses) if clauses else sql.SQL("TRUE")
    query = sql.SQL(LIST_REQUESTS).format(where=where)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, (*params, limit))
    return await cur.fetchall()


async def redeliver_request(conn: psycopg.AsyncConnection, custom_id: str) -> dict[str, Any] | None:
    """Queue a stored result for delivery again; None when the state or a missing result forbids it."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(REDELIVER, (custom_id, list(REDELIVERABLE_REQUESTS)))
    row = await cur.fetchone()
    await conn.commit()
    return row
