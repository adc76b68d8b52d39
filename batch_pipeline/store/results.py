"""The results stage's statements: a staging table filled by COPY, applied with set-based UPDATEs.

All of them run in the caller's transaction, together with the batch's state change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import psycopg

# One staged line: custom_id, the line as stored (text of a JSON object, or None), its kind
# ('ok' | 'retry' | 'failed') and the error message.
StagedLine = tuple[str, str | None, str, str | None]

CREATE_STAGING = """
CREATE TEMP TABLE results_staging (
    custom_id text NOT NULL, line jsonb, kind text NOT NULL, error_msg text
) ON COMMIT DROP
"""
COPY_STAGING = "COPY results_staging (custom_id, line, kind, error_msg) FROM STDIN"
# Only the columns the joins and filters use: the statistics of the jsonb lines (detoasting and
# comparing 50,000 of them) cost as much again and no plan reads them.
ANALYZE_STAGING = "ANALYZE results_staging (custom_id, kind)"

# Only requests still waiting for their result are touched: re-applying the same file is a no-op.
APPLY_RETRIES = """
UPDATE batchman.requests r
SET state = 'pending', batch_id = NULL, resubmit_count = r.resubmit_count + 1, result = NULL,
    error_msg = NULL, updated_at = now()
FROM results_staging s
WHERE r.batch_id = %(batch_id)s AND r.custom_id = s.custom_id AND r.state = 'openai_processing'
  AND s.kind = 'retry' AND r.resubmit_count < %(max_resubmits)s
"""

# Successes, failures, and retryable lines whose resubmissions are spent: store and make deliverable.
APPLY_RESULTS = """
UPDATE batchman.requests r
SET state = 'openai_processed', result = s.line, error_msg = s.error_msg, next_attempt_at = now(),
    updated_at = now()
FROM results_staging s
WHERE r.batch_id = %(batch_id)s AND r.custom_id = s.custom_id AND r.state = 'openai_processing'
  AND s.line IS NOT NULL
"""

LEFTOVERS_RETRY = """
UPDATE batchman.requests
SET state = 'pending', batch_id = NULL, resubmit_count = resubmit_count + 1, updated_at = now()
WHERE batch_id = %(batch_id)s AND state = 'openai_processing' AND resubmit_count < %(max_resubmits)s
"""

LEFTOVERS_FAIL = """
UPDATE batchman.requests
SET state = 'openai_processed', next_attempt_at = now(), updated_at = now(),
    error_msg = %(code)s || ': ' || %(message)s,
    result = jsonb_build_object('id', NULL, 'custom_id', custom_id, 'response', NULL,
                                'error', jsonb_build_object('code', %(code)s, 'message', %(message)s))
WHERE batch_id = %(batch_id)s AND state = 'openai_processing'
"""

PROCESSING_IN_ORDER = """
SELECT custom_id FROM batchman.requests WHERE batch_id = %s AND state = 'openai_processing' ORDER BY id
"""

COUNT_DELIVERABLE = """
SELECT count(*) AS n FROM batchman.requests WHERE batch_id = %s AND state = 'openai_processed'
"""


def stage(conn: psycopg.Connection, lines: Iterable[StagedLine]) -> Counter[str]:
    """COPY the lines into this transaction's staging table and analyse it; how many of each kind,
    and under ``'duplicates'`` how many lines repeat a custom_id staged before them."""
    kinds: Counter[str] = Counter()
    seen: set[str] = set()
    conn.execute(CREATE_STAGING)
    with conn.cursor().copy(COPY_STAGING) as copy:
        for line in lines:
            copy.write_row(line)
            kinds[line[2]] += 1
            seen.add(line[0])
    # How many lines repeat a custom_id already staged: only then is DEDUPE_STAGING needed.
    kinds["duplicates"] = kinds.total() - len(seen)
    # Temp tables have no statistics until analysed; without them the planner may pick a nested loop
    # over 50,000 staged lines.
    conn.execute(ANALYZE_STAGING)
    return kinds


def apply_staged(
    conn: psycopg.Connection, batch_id: int, max_resubmits: int, any_retries: bool = True
) -> tuple[int, int]:
    """Requeue the retryable lines (within ``max_resubmits``), store the rest: (resubmitted, stored).
    ``any_retries=False`` (no 'retry' line was staged) skips the retry statement's scan of the lines."""
    params = {"batch_id": batch_id, "max_resubmits": max_resubmits}
    resubmitted = conn.execute(APPLY_RETRIES, params).rowcount if any_retries else 0
    return resubmitted, conn.execute(APPLY_RESULTS, params).rowcount


def requeue_leftovers(conn: psycopg.Connection, batch_id: int, max_resubmits: int) -> int:
    """Requests OpenAI returned no line for go back to the queue (within ``max_resubmits``)."""
    return conn.execute(LEFTOVERS_RETRY, {"batch_id": batch_id, "max_resubmits": max_resubmits}).rowcount


def fail_leftovers(conn: psycopg.Connection, batch_id: int, code: str, message: str) -> int:
    """The batch's requests still without a result get an error line in OpenAI's shape."""
    return conn.execute(LEFTOVERS_FAIL, {"batch_id": batch_id, "code": code, "message": message}).rowcount


def processing_in_order(conn: psycopg.Connection, batch_id: int) -> list[dict[str, Any]]:
    """The batch's requests awaiting a result, in input-file line order."""
    return conn.execute(PROCESSING_IN_ORDER, (batch_id,)).fetchall()


def count_deliverable(conn: psycopg.Connection, batch_id: int) -> int:
    return conn.execute(COUNT_DELIVERABLE, (batch_id,)).fetchone()["n"]


# OpenAI returns one line per request, but should a file hold several for one custom_id, one is kept:
# a success over a final error over a retryable one, the first staged among equals. Else an 'ok' and
# a 'retry' line would both match the request, and the retry would throw the paid-for success away.
DEDUPE_STAGING = """
DELETE FROM results_staging WHERE ctid IN (
    SELECT ctid FROM (
        SELECT ctid, row_number() OVER (
            PARTITION BY custom_id
            ORDER BY CASE kind WHEN 'ok' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END, ctid
        ) AS n
        FROM results_staging
    ) ranked
    WHERE n > 1
)
"""


# When OpenAI's batch object carried no ``usage`` (batches from before OpenAI reported it, compatible
# APIs), the batch's tokens are summed from the usage of its result lines instead: Responses names
# them input/output_tokens, Chat Completions and Embeddings prompt/completion_tokens. Only JSON
# numbers count (a string there must not fail the results run); sums are capped to bigint.
USAGE_FROM_LINES = """
UPDATE batchman.batches b
SET input_tokens = t.input_tokens, cached_tokens = coalesce(t.cached_tokens, 0),
    output_tokens = coalesce(t.output_tokens, 0), reasoning_tokens = coalesce(t.reasoning_tokens, 0),
    updated_at = now()
FROM (
    SELECT least(sum(coalesce(n.input, n.prompt)), 9223372036854775807)::bigint AS input_tokens,
           least(sum(coalesce(n.input_cached, n.prompt_cached)), 9223372036854775807)::bigint
               AS cached_tokens,
           least(sum(coalesce(n.output, n.completion)), 9223372036854775807)::bigint AS output_tokens,
           least(sum(coalesce(n.output_reasoning, n.completion_reasoning)), 9223372036854775807)::bigint
               AS reasoning_tokens
    FROM results_staging s
    CROSS JOIN LATERAL (SELECT s.line #> '{response,body,usage}' AS u) usage
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN jsonb_typeof(u -> 'input_tokens') = 'number'
                 THEN (u ->> 'input_tokens')::numeric END AS input,
            CASE WHEN jsonb_typeof(u -> 'prompt_tokens') = 'number'
                 THEN (u ->> 'prompt_tokens')::numeric END AS prompt,
            CASE WHEN jsonb_typeof(u #> '{input_tokens_details,cached_tokens}') = 'number'
                 THEN (u #>> '{input_tokens_details,cached_tokens}')::numeric END AS input_cached,
            CASE WHEN jsonb_typeof(u #> '{prompt_tokens_details,cached_tokens}') = 'number'
                 THEN (u #>> '{prompt_tokens_details,cached_tokens}')::numeric END AS prompt_cached,
            CASE WHEN jsonb_typeof(u -> 'output_tokens') = 'number'
                 THEN (u ->> 'output_tokens')::numeric END AS output,
            CASE WHEN jsonb_typeof(u -> 'completion_tokens') = 'number'
                 THEN (u ->> 'completion_tokens')::numeric END AS completion,
            CASE WHEN jsonb_typeof(u #> '{output_tokens_details,reasoning_tokens}') = 'number'
                 THEN (u #>> '{output_tokens_details,reasoning_tokens}')::numeric END AS output_reasoning,
            CASE WHEN jsonb_typeof(u #> '{completion_tokens_details,reasoning_tokens}') = 'number'
                 THEN (u #>> '{completion_tokens_details,reasoning_tokens}')::numeric END
                 AS completion_reasoning
    ) n
    WHERE jsonb_typeof(u) = 'object'
) t
WHERE b.id = %s AND b.input_tokens IS NULL AND t.input_tokens IS NOT NULL
"""


def usage_from_lines(conn: psycopg.Connection, batch_id: int) -> bool:
    """Fill the batch's token columns from its staged lines when OpenAI reported none (see above)."""
    return conn.execute(USAGE_FROM_LINES, (batch_id,)).rowcount == 1


def dedupe_staged(conn: psycopg.Connection) -> int:
    """Keep one staged line per custom_id (see DEDUPE_STAGING); returns how many were dropped."""
    return conn.execute(DEDUPE_STAGING).rowcount
