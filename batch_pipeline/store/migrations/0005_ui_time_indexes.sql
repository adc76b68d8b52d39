-- The operator UI's hourly charts read the last day of requests and delivery attempts. BRIN indexes:
-- both tables are appended in time order, so a block-range summary finds the last day's rows without a
-- scan, and (unlike a B-tree) costs the insert path next to nothing.
CREATE INDEX requests_created_brin ON batchman.requests USING brin (created_at);
CREATE INDEX delivery_attempts_attempted_brin ON batchman.delivery_attempts USING brin (attempted_at);
