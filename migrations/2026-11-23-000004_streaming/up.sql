-- Idempotent sends: a client's key for a user message, unique per conversation.
ALTER TABLE messages ADD COLUMN client_message_id text
    CHECK (char_length(client_message_id) <= 200);
CREATE UNIQUE INDEX messages_client_id_idx
    ON messages (conversation_id, client_message_id) WHERE client_message_id IS NOT NULL;
-- Finding generations left unfinished (recovery at start).
CREATE INDEX messages_unfinished_idx ON messages (updated_at)
    WHERE status IN ('PENDING', 'STREAMING');

-- Durable background jobs (titles, ...), claimed with FOR UPDATE SKIP LOCKED. A claimed job
-- is leased until `locked_until`; a process that dies mid-job lets the lease lapse and
-- another picks it up.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL,
    -- At most one pending job per (kind, dedupe_key).
    dedupe_key   text,
    payload      jsonb NOT NULL DEFAULT '{}',
    run_at       timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5,
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX jobs_dedupe_idx ON jobs (kind, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX jobs_due_idx ON jobs (run_at);
