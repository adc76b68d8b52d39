"""The OpenAI call figures every process writes (``openai_client.CallRecorder``) and ``/metrics`` reads.

A flush writes a few rows (one per operation and outcome seen since the last one) in one transaction.
``/metrics`` reads them by id range, as the other counters of ``store.metrics``: rows are never
updated, so a range read once is final.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import psycopg
from psycopg.rows import dict_row

from batch_pipeline.config import normalize_database_url
from batch_pipeline.db import connect
from batch_pipeline.openai_call_figures import CallTotals, flush_calls_to

INSERT_CALLS = """
INSERT INTO batchman.openai_calls (operation, outcome, calls, seconds, buckets)
VALUES (%(operation)s, %(outcome)s, %(calls)s, %(seconds)s, %(buckets)s::bigint[])
"""
# How many latency buckets a row holds: len(openai_client.CALL_BUCKETS_SECONDS) + 1 (+Inf); a test
# checks the two agree (the SDK is not imported here: the API reads these rows without it).
CALL_BUCKETS = 13
# One id range (a primary key range scan), summed per operation and outcome, bucket by bucket. Summing
# the subscripts is about 4x faster than unnest (1,000,000 rows: 1.5 s against 5.4 s, see the README).
CALLS_BETWEEN = """
SELECT operation, outcome, sum(calls)::bigint AS calls, sum(seconds) AS seconds,
       ARRAY[sum(buckets[1]), sum(buckets[2]), sum(buckets[3]), sum(buckets[4]), sum(buckets[5]),
             sum(buckets[6]), sum(buckets[7]), sum(buckets[8]), sum(buckets[9]), sum(buckets[10]),
             sum(buckets[11]), sum(buckets[12]), sum(buckets[13])]::bigint[] AS buckets
FROM batchman.openai_calls
WHERE id > %(after)s::bigint AND id <= %(upto)s::bigint
GROUP BY 1, 2
"""


def write_calls(dsn: str, rows: list[CallTotals]) -> None:
    """One flush of a process's figures, in one transaction (all of them or none)."""
    params = [
        {
            "operation": r.operation,
            "outcome": r.outcome,
            "calls": r.calls,
            "seconds": r.seconds,
            "buckets": r.buckets,
        }
        for r in rows
        if r.calls > 0
    ]
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(INSERT_CALLS, params)


def record_openai_calls(dsn: str | None) -> None:
    """From now on this process's OpenAI calls reach the database (every few seconds and at exit).
    Without a database (``batchman up`` before its embedded server is known) they stay uncounted."""
    if dsn:
        flush_calls_to(partial(write_calls, normalize_database_url(dsn)))


async def calls_between(conn: psycopg.AsyncConnection, after: int, upto: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(CALLS_BETWEEN, {"after": after, "upto": upto})
    return await cur.fetchall()
