-- Intake pause: a single row (the CHECK keeps it single). The API reads it through a per-process
-- cache of about a second; the RabbitMQ consumer polls it about once a second.
CREATE TABLE batchman.intake_control (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    paused      boolean     NOT NULL DEFAULT false,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO batchman.intake_control (id) VALUES (true);
