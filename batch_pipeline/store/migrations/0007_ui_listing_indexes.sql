-- The operator UI lists requests newest first, filtered by batch or by a state worth looking into.
-- Without these a filter matching old or rare rows walks the primary key from the newest row down
-- (600 ms for a 45,000-request batch among 1,000,000, bench/ui.py). Both are partial: intake rows (no
-- batch, 'pending') never enter them, so the insert path keeps its indexes; a request enters the first
-- once, when it is batched, and the second only if its delivery or its OpenAI line failed.
CREATE INDEX requests_batch_order_idx ON batchman.requests (batch_id, id) WHERE batch_id IS NOT NULL;
CREATE INDEX requests_trouble_idx ON batchman.requests (state, id)
    WHERE state IN ('failed', 'delivery_failed', 'expired', 'cancelled');
