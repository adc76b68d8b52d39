-- Pipeline: capacity control, crash-safe submission bookkeeping, resubmission, cleanup.

-- Embedding inputs per request (OpenAI caps an embeddings batch at 50,000 inputs in all).
ALTER TABLE batchman.requests ADD COLUMN input_count integer NOT NULL DEFAULT 1;

-- How many upload runs this batch was handed to: part of the run key, so a batch re-admitted after
-- waiting for capacity gets a new run while a re-emitted request for the same admission does not.
ALTER TABLE batchman.batches ADD COLUMN launch_count integer NOT NULL DEFAULT 0;
-- The OpenAI error of the last failed attempt (e.g. token_limit_exceeded), kept for operators.
ALTER TABLE batchman.batches ADD COLUMN last_openai_error jsonb;
ALTER TABLE batchman.batches ADD COLUMN files_deleted_at timestamptz;
-- Where the requests of an expired/cancelled batch went on to.
ALTER TABLE batchman.batches ADD COLUMN resubmitted_count integer NOT NULL DEFAULT 0;

-- 'resubmitted': every request of this batch moved on to later batches (e.g. expired untouched).
ALTER TABLE batchman.batches DROP CONSTRAINT batches_state_check;
ALTER TABLE batchman.batches ADD CONSTRAINT batches_state_check CHECK (state IN (
    'ready', 'uploading', 'uploaded', 'waiting_for_capacity', 'openai_processing',
    'openai_completed', 'downloading', 'ready_to_deliver', 'delivering', 'delivered',
    'partially_delivered', 'delivery_failed', 'failed', 'cancelling', 'cancelled', 'resubmitted'
));

-- Capacity admission reads the tokens reserved per model by batches at OpenAI.
CREATE INDEX batches_reserved_idx ON batchman.batches (model)
    WHERE state IN ('openai_processing', 'cancelling');
-- Retention and file cleanup scan finished batches by completion time.
CREATE INDEX batches_completed_idx ON batchman.batches (completed_at)
    WHERE completed_at IS NOT NULL;

-- OpenAI webhook deliveries already seen (webhook-id), so duplicates are ignored.
CREATE TABLE batchman.openai_webhook_events (
    webhook_id      text        PRIMARY KEY,
    event_type      text        NOT NULL,
    openai_batch_id text,
    received_at     timestamptz NOT NULL DEFAULT now()
);
