-- Agents: named presets of a model, a system prompt and generation settings, scoped to a
-- workspace. A conversation started from an agent copies those settings (so editing the
-- agent later never rewrites an existing conversation) and remembers the agent.

CREATE TABLE agents (
    id                uuid PRIMARY KEY,
    workspace_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name              text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 80),
    description       text CHECK (char_length(description) <= 500),
    -- One emoji; the exact rule lives in `agents::service::normalize_avatar`.
    avatar            text NOT NULL CHECK (octet_length(avatar) BETWEEN 1 AND 16),
    model             text NOT NULL,
    system_prompt     text CHECK (char_length(system_prompt) <= 32000),
    temperature       real CHECK (temperature >= 0 AND temperature <= 2),
    max_output_tokens integer CHECK (max_output_tokens > 0),
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- `agents(workspaceId)` lists by name.
CREATE INDEX agents_workspace_name_idx ON agents (workspace_id, name);
CREATE INDEX agents_created_by_idx ON agents (created_by);

-- Generation settings of a conversation (copied from its agent, or set directly); null
-- means the provider's default temperature and the model's own output limit.
ALTER TABLE conversations
    ADD COLUMN agent_id uuid REFERENCES agents (id) ON DELETE SET NULL,
    ADD COLUMN temperature real CHECK (temperature >= 0 AND temperature <= 2),
    ADD COLUMN max_output_tokens integer CHECK (max_output_tokens > 0);

CREATE INDEX conversations_agent_idx ON conversations (agent_id);
