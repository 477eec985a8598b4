-- Accounts, workspaces, sessions: the foundation every other table hangs off.

CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    -- Stored trimmed and lower-cased by the application; uniqueness is on that form.
    email               text NOT NULL UNIQUE,
    password_hash       text NOT NULL,
    display_name        text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workspaces (
    id         uuid PRIMARY KEY,
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    -- The workspace made at registration; it cannot be deleted.
    personal   boolean NOT NULL DEFAULT false,
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workspace_members (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('OWNER', 'ADMIN', 'MEMBER')),
    joined_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX workspace_members_user_idx ON workspace_members (user_id);

-- One row per workspace; the reserve/settle logic lives in the quotas capability.
CREATE TABLE workspace_quotas (
    workspace_id    uuid PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    period          text NOT NULL CHECK (period IN ('DAY', 'MONTH')),
    token_limit     bigint CHECK (token_limit >= 0),
    message_limit   bigint CHECK (message_limit >= 0),
    tokens_used     bigint NOT NULL DEFAULT 0,
    tokens_reserved bigint NOT NULL DEFAULT 0,
    messages_used   bigint NOT NULL DEFAULT 0,
    period_start    timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A session is one refresh-token family: every rotation stays in the family, and revoking
-- the session (logout, reuse detected, password change) ends every token in it, including
-- access tokens, which carry the session id and are checked against this row.
CREATE TABLE sessions (
    id             uuid PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text,
    user_agent     text,
    ip             text
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

-- Only the SHA-256 of a refresh token is stored; the token itself is never kept.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- Set when the token is rotated; presenting it again is reuse.
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

CREATE TABLE password_reset_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_reset_tokens_user_idx ON password_reset_tokens (user_id);
