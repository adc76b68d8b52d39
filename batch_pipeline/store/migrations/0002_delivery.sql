-- Delivery: claims with a lease, a per-cycle retry counter, and delivery waves per batch.

-- A claimed request (state 'delivering') belongs to one run until claimed_until; after that a crashed
-- run's claims are due again, so nothing is lost and two live runs never send the same request.
ALTER TABLE batchman.requests ADD COLUMN claimed_until timestamptz;
-- Transient failures in the current delivery cycle. Reset to 0 whenever the request reaches a final
-- delivery state, so any redelivery (per request or per batch) starts a fresh retry schedule.
ALTER TABLE batchman.requests ADD COLUMN delivery_retries integer NOT NULL DEFAULT 0;
CREATE INDEX requests_claimed_idx ON batchman.requests (claimed_until) WHERE state = 'delivering';

-- The delivery sensor launches one run per wave (run key deliver:<batch>:<wave>) and marks the batch
-- as requested, so it does not launch a second run while one is queued or running.
ALTER TABLE batchman.batches ADD COLUMN delivery_wave integer NOT NULL DEFAULT 0;
ALTER TABLE batchman.batches ADD COLUMN delivery_requested_at timestamptz;
CREATE INDEX batches_delivery_idx ON batchman.batches (id)
    WHERE state IN ('ready_to_deliver', 'delivering');
