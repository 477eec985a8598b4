-- A workspace's own provider keys ("bring your own key"), encrypted with AES-256-GCM under
-- COLLOQUY_MASTER_KEY. The nonce is fresh per record; the ciphertext is bound to its
-- workspace and provider (associated data), so rows cannot be swapped.
CREATE TABLE provider_keys (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    nonce        bytea NOT NULL,
    ciphertext   bytea NOT NULL,
    -- The only part ever shown back.
    last4        text NOT NULL,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider)
);
