-- The UI's custom_id substring search, indexed without slowing intake down. A trigram index on
-- requests.custom_id itself made every bulk COPY pay for it (+1.1 s per 50,000 rows); here the
-- custom_ids are copied into a table of their own in the background (the search_index sensor, in
-- chunks, in id order), and a search reads that table's trigram index up to a watermark plus the
-- requests above it by primary key (store/request_search.py). Intake never touches this table.
CREATE TABLE batchman.request_search (
    -- Same id as the request; a deleted request (retention, DELETE of its batch) leaves with it.
    id          bigint PRIMARY KEY REFERENCES batchman.requests (id) ON DELETE CASCADE,
    custom_id   text   NOT NULL
);

-- How far the copy has got (one row, kept single by its CHECK):
--   searchable_up_to  every committed request with id <= it is in request_search (searches read the
--                     index up to here and the requests above it);
--   filled_up_to      the highest id copied so far (>= searchable_up_to);
--   writers           the transactions that held a write lock on requests just after that copy. A
--                     request's id is drawn before it commits, so a slower transaction may commit a
--                     lower id after a higher one was copied; once none of these is left, no id
--                     <= filled_up_to can still appear, and the filler reads the band above
--                     searchable_up_to again and moves the mark up to filled_up_to.
CREATE TABLE batchman.request_search_progress (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    searchable_up_to  bigint  NOT NULL DEFAULT 0,
    filled_up_to      bigint  NOT NULL DEFAULT 0,
    writers           text[]  NOT NULL DEFAULT '{}'
);
INSERT INTO batchman.request_search_progress (id) VALUES (true);

-- pg_trgm ships with Postgres's contrib package, but not with every server (the embedded one of
-- `batchman up` lacks it) and a role may not be allowed to install it: then the migration still
-- succeeds, without the index; the filler copies nothing while the index is missing, and a search
-- scans requests newest first as before (correct, only slower). Creating the index later (README)
-- is enough to turn it on. The operator class is named with the schema the extension lives in.
DO $$
DECLARE
    trgm_schema name;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm not installed (%): the custom_id search stays a scan', SQLERRM;
        END;
    END IF;
    SELECT extnamespace::regnamespace::name INTO trgm_schema FROM pg_extension WHERE extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX request_search_custom_id_trgm ON batchman.request_search '
            'USING gin (custom_id %I.gin_trgm_ops)', trgm_schema);
    END IF;
END
$$;
