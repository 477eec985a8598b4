-- An optional per-member token budget within the workspace's period, set by OWNER/ADMIN.
ALTER TABLE workspace_members
    ADD COLUMN token_limit bigint CHECK (token_limit >= 0),
    ADD COLUMN tokens_used bigint NOT NULL DEFAULT 0,
    ADD COLUMN tokens_reserved bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_start timestamptz;

-- Tokens held by generations in progress. Each expires, so a reservation whose settlement
-- never came (a process killed hard) is released by the sweeper.
CREATE TABLE quota_reservations (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id       uuid REFERENCES users (id) ON DELETE SET NULL,
    message_id    uuid REFERENCES messages (id) ON DELETE SET NULL,
    model         text NOT NULL,
    tokens        bigint NOT NULL CHECK (tokens >= 0),
    prompt_tokens bigint NOT NULL,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quota_reservations_expiry_idx ON quota_reservations (expires_at);
CREATE INDEX quota_reservations_message_idx ON quota_reservations (message_id);

-- The usage ledger: one row per generation, whatever its outcome.
CREATE TABLE usage_records (
    id                uuid PRIMARY KEY,
    workspace_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id           uuid REFERENCES users (id) ON DELETE SET NULL,
    conversation_id   uuid REFERENCES conversations (id) ON DELETE SET NULL,
    message_id        uuid REFERENCES messages (id) ON DELETE SET NULL,
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_micro_usd    bigint NOT NULL,
    -- Counted by us (the provider reported none).
    estimated         boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_records_workspace_time_idx ON usage_records (workspace_id, created_at);
