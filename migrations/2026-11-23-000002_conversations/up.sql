-- Conversations and their messages, stored as a tree: each message has a parent (null for a
-- root), a per-conversation sequence number and a depth (1 for a root). The conversation
-- points at its active leaf; the active branch is the path from that leaf to its root.

CREATE TABLE conversations (
    id              uuid PRIMARY KEY,
    workspace_id    uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    title           text CHECK (char_length(title) <= 200),
    system_prompt   text CHECK (char_length(system_prompt) <= 32000),
    model           text NOT NULL,
    pinned          boolean NOT NULL DEFAULT false,
    archived        boolean NOT NULL DEFAULT false,
    -- Set once messages exist (FK added below, after messages).
    active_leaf_id  uuid,
    -- Kept on write so listings need no query per row:
    -- messages on the active branch (= the active leaf's depth),
    message_count   integer NOT NULL DEFAULT 0,
    -- the start of the active leaf's content,
    preview         text,
    -- the newest message's time, and the listing's sort key (last message, else creation).
    last_message_at timestamptz,
    sort_at         timestamptz NOT NULL DEFAULT now(),
    -- The last `seq` handed out; bumping it locks the row, serialising inserts.
    last_seq        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    title_search    tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(title, ''))) STORED
);

-- The listing: a workspace's conversations, archived or not, pinned first, newest activity
-- first, id as the tie-breaker (also the keyset cursor).
CREATE INDEX conversations_listing_idx
    ON conversations (workspace_id, archived, pinned DESC, sort_at DESC, id DESC);
CREATE INDEX conversations_title_search_idx ON conversations USING gin (title_search);
CREATE INDEX conversations_created_by_idx ON conversations (created_by);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    conversation_id   uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    parent_id         uuid REFERENCES messages (id) ON DELETE CASCADE,
    seq               integer NOT NULL,
    depth             integer NOT NULL CHECK (depth >= 1),
    role              text NOT NULL CHECK (role IN ('SYSTEM', 'USER', 'ASSISTANT')),
    content           text NOT NULL DEFAULT '',
    status            text NOT NULL
                      CHECK (status IN ('PENDING', 'STREAMING', 'COMPLETE', 'CANCELLED', 'FAILED')),
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    cost_micro_usd    bigint,
    error             text,
    created_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    content_search    tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    UNIQUE (conversation_id, seq)
);

-- Children and siblings of a message; roots of a conversation.
CREATE INDEX messages_parent_idx ON messages (parent_id, seq);
CREATE INDEX messages_roots_idx ON messages (conversation_id, seq) WHERE parent_id IS NULL;
CREATE INDEX messages_content_search_idx ON messages USING gin (content_search);

ALTER TABLE conversations
    ADD CONSTRAINT conversations_active_leaf_fk
    FOREIGN KEY (active_leaf_id) REFERENCES messages (id) ON DELETE SET NULL
    DEFERRABLE INITIALLY DEFERRED;
