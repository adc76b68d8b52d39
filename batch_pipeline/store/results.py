"""SQL of the results stage: a staging table filled by COPY, applied with set-based UPDATEs."""

CREATE_STAGING = """
CREATE TEMP TABLE results_staging (
    custom_id text NOT NULL, line jsonb, kind text NOT NULL, error_msg text
) ON COMMIT DROP
"""
COPY_STAGING = "COPY results_staging (custom_id, line, kind, error_msg) FROM STDIN"
ANALYZE_STAGING = "ANALYZE results_staging"

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
