-- The batching sensor sums bytes, tokens and inputs over the head of every queued group each tick.
-- With those columns in the index the sums are an index-only scan: with 1,000,000 queued requests
-- a tick reads ~12,000 index pages instead of ~1,000,000 heap pages (bench/pipeline.py).
DROP INDEX batchman.requests_queued_idx;
CREATE INDEX requests_queued_idx ON batchman.requests (endpoint, model, id)
    INCLUDE (created_at, payload_bytes, estimated_tokens, input_count)
    WHERE state = 'pending' AND batch_id IS NULL;
