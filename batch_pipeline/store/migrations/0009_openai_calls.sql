-- The OpenAI calls of every process (Dagster runs, the code server's sensors, the API), for /metrics.
-- A run is a short-lived process, maybe on another host: it cannot be scraped, so each process adds
-- its figures here every few seconds and at exit (openai_client.CallRecorder, store/openai_calls.py):
-- one row per (operation, outcome) per flush, never one per call. Rows are only ever added, so the
-- API turns them into monotonic counters by reading each new id range once (admin/metrics.py), as it
-- does for delivery_attempts and batch_transitions.
CREATE TABLE batchman.openai_calls (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flushed_at  timestamptz      NOT NULL DEFAULT now(),
    operation   text             NOT NULL,  -- files.create, batches.retrieve, files.content, ...
    outcome     text             NOT NULL,  -- ok, client_error, rate_limited, server_error, timeout, ...
    calls       bigint           NOT NULL CHECK (calls > 0),
    seconds     double precision NOT NULL CHECK (seconds >= 0),
    -- Calls per latency bucket (openai_client.CALL_BUCKETS_SECONDS, then +Inf), not cumulative.
    buckets     bigint[]         NOT NULL
);
-- For pruning by age (a BRIN: rows arrive in flushed_at order).
CREATE INDEX openai_calls_flushed_brin ON batchman.openai_calls USING brin (flushed_at);
