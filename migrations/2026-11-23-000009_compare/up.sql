-- N-way compare: one user message answered by several models side by side, a judge's
-- summary and ranking of the answers, votes on answers, and the leaderboard built from both.

-- When an answer's first token arrived, by the database's clock like created_at (latency to
-- first token = first_token_at - created_at).
ALTER TABLE messages ADD COLUMN first_token_at timestamptz;

-- One per compared user message. `status`: PENDING while answers are generated, JUDGING once
-- the last one ended and the judge job is queued (set once, which queues the job once),
-- READY when the entries carry the judge's results.
CREATE TABLE comparisons (
    id              uuid PRIMARY KEY,
    user_message_id uuid NOT NULL UNIQUE REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    workspace_id    uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'JUDGING', 'READY')),
    -- The model asked to judge, and what the results came from: that model's id, or
    -- 'heuristic' when its verdict was unusable (or it could not be asked).
    judge_model     text,
    judged_by       text,
    judged_at       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The leaderboard reads a workspace's newest comparisons.
CREATE INDEX comparisons_workspace_idx ON comparisons (workspace_id, created_at DESC);

-- One per answer of a comparison, in the order the models were asked for.
CREATE TABLE comparison_entries (
    comparison_id uuid NOT NULL REFERENCES comparisons (id) ON DELETE CASCADE,
    position      integer NOT NULL CHECK (position >= 0),
    message_id    uuid NOT NULL UNIQUE REFERENCES messages (id) ON DELETE CASCADE,
    model         text NOT NULL,
    summary       text,
    reasoning     text,
    score         double precision,
    rank          integer CHECK (rank >= 1),
    PRIMARY KEY (comparison_id, position),
    UNIQUE (comparison_id, model)
);

-- A member's vote on an answer: one per user and message; voting again replaces it.
CREATE TABLE message_votes (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    vote       text NOT NULL CHECK (vote IN ('UP', 'DOWN')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX message_votes_user_idx ON message_votes (user_id);
