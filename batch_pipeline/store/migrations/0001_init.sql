-- Initial schema. App tables live in their own schema, apart from Dagster's tables.
CREATE SCHEMA IF NOT EXISTS batchman;

-- One OpenAI batch: one endpoint + one model. Created when the batching sensor cuts a group.
CREATE TABLE batchman.batches (
    id                      bigserial PRIMARY KEY,
    endpoint                text        NOT NULL,
    model                   text        NOT NULL,
    state                   text        NOT NULL DEFAULT 'ready',
    request_count           integer     NOT NULL DEFAULT 0,
    size_bytes              bigint      NOT NULL DEFAULT 0,
    estimated_tokens        bigint      NOT NULL DEFAULT 0,
    openai_input_file_id    text,
    openai_batch_id         text,
    openai_output_file_id   text,
    openai_error_file_id    text,
    openai_status           text,
    openai_completed        integer,
    openai_failed           integer,
    openai_total            integer,
    input_tokens            bigint,
    cached_tokens           bigint,
    output_tokens           bigint,
    reasoning_tokens        bigint,
    token_limit_retries     integer     NOT NULL DEFAULT 0,
    capacity_wait_reason    text,
    waiting_since           timestamptz,
    next_check_at           timestamptz,
    error_msg               text,
    expires_at              timestamptz,
    completed_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT batches_state_check CHECK (state IN (
        'ready', 'uploading', 'uploaded', 'waiting_for_capacity', 'openai_processing',
        'openai_completed', 'downloading', 'ready_to_deliver', 'delivering', 'delivered',
        'partially_delivered', 'delivery_failed', 'failed', 'cancelling', 'cancelled'
    ))
);

-- The states the sensors scan; partial indexes stay small while finished batches pile up.
CREATE INDEX batches_ready_idx ON batchman.batches (id) WHERE state = 'ready';
CREATE INDEX batches_waiting_idx ON batchman.batches (model, waiting_since)
    WHERE state = 'waiting_for_capacity';
CREATE INDEX batches_in_flight_idx ON batchman.batches (next_check_at)
    WHERE state IN ('openai_processing', 'cancelling');
CREATE INDEX batches_results_idx ON batchman.batches (id) WHERE state = 'openai_completed';
CREATE INDEX batches_created_at_idx ON batchman.batches (created_at, id);
CREATE UNIQUE INDEX batches_openai_batch_id_key ON batchman.batches (openai_batch_id);

-- One client request. Intake only ever inserts here (append-only hot path, no shared counter rows).
CREATE TABLE batchman.requests (
    id                      bigserial PRIMARY KEY,
    custom_id               text        NOT NULL,
    endpoint                text        NOT NULL,
    model                   text        NOT NULL,
    -- The exact JSONL line sent to OpenAI: batch files are built by concatenating these.
    payload                 text        NOT NULL,
    payload_bytes           integer     NOT NULL,
    estimated_tokens        integer     NOT NULL,
    delivery_config         jsonb       NOT NULL,
    state                   text        NOT NULL DEFAULT 'pending',
    batch_id                bigint      REFERENCES batchman.batches (id) ON DELETE CASCADE,
    -- The whole OpenAI output/error line for this request, as delivered.
    result                  jsonb,
    error_msg               text,
    resubmit_count          integer     NOT NULL DEFAULT 0,
    delivery_attempt_count  integer     NOT NULL DEFAULT 0,
    next_attempt_at         timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT requests_custom_id_key UNIQUE (custom_id),
    CONSTRAINT requests_state_check CHECK (state IN (
        'pending', 'openai_processing', 'openai_processed', 'delivering', 'delivered',
        'failed', 'delivery_failed', 'expired', 'cancelled'
    ))
);

-- Queued requests not yet in a batch, per group, in arrival order: what the batching sensor scans.
CREATE INDEX requests_queued_idx ON batchman.requests (endpoint, model, id)
    WHERE state = 'pending' AND batch_id IS NULL;
-- Partial: intake rows (no batch yet) never touch it, keeping the insert path to three indexes.
CREATE INDEX requests_batch_idx ON batchman.requests (batch_id, state) WHERE batch_id IS NOT NULL;
-- Results due for a (re)delivery attempt.
CREATE INDEX requests_due_idx ON batchman.requests (next_attempt_at) WHERE state = 'openai_processed';

-- Audit trail: every batch state change with time and reason.
CREATE TABLE batchman.batch_transitions (
    id              bigserial PRIMARY KEY,
    batch_id        bigint      NOT NULL REFERENCES batchman.batches (id) ON DELETE CASCADE,
    from_state      text,
    to_state        text        NOT NULL,
    reason          text,
    transitioned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batch_transitions_batch_idx ON batchman.batch_transitions (batch_id, transitioned_at, id);

-- Every delivery attempt, with a snapshot of where it went and how it ended.
CREATE TABLE batchman.delivery_attempts (
    id              bigserial PRIMARY KEY,
    request_id      bigint      NOT NULL REFERENCES batchman.requests (id) ON DELETE CASCADE,
    delivery_config jsonb       NOT NULL,
    outcome         text        NOT NULL,
    http_status     integer,
    duration_ms     integer,
    error_msg       text,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivery_attempts_outcome_check CHECK (outcome IN (
        'success', 'http_status_not_2xx', 'timeout', 'connection_error', 'queue_not_found',
        'blocked_by_policy', 'rabbitmq_not_configured', 'other'
    ))
);
CREATE INDEX delivery_attempts_request_idx ON batchman.delivery_attempts (request_id, attempted_at);

-- Per-model enqueued-token limits set by operators (longest matching prefix wins).
CREATE TABLE batchman.model_limits (
    model_prefix    text        PRIMARY KEY,
    token_limit     bigint      NOT NULL CHECK (token_limit > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
