-- The delivery claim (store/deliveries.py CLAIM) takes a batch's due results in id order, a chunk at a
-- time. Without this it walked the batch's id range (primary key or requests_batch_order_idx) past
-- every row already delivered, so claiming a whole batch visited O(n²/chunk) rows: 20 chunks of a
-- 10,000-request batch read ~100,000. Partial: a request is in it only while its result waits for a
-- (re)delivery attempt, so it stays as small as the backlog.
CREATE INDEX requests_deliverable_idx ON batchman.requests (batch_id, id) WHERE state = 'openai_processed';
