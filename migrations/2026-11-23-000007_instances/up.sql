-- Scale-out: every server process registers itself and heartbeats; a generation records the
-- process running it, so another process can tell a live generation from an orphan.
CREATE TABLE instances (
    id           uuid PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    -- Written with the database's clock only, so the clocks of the machines never matter.
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- The process running the generation (no foreign key: its row goes away before the
-- message is reaped, and a message outlives any process).
ALTER TABLE messages ADD COLUMN runner_instance uuid;
-- How many deltas `content` holds: a reader resumes the live stream after this many.
ALTER TABLE messages ADD COLUMN content_seq integer NOT NULL DEFAULT 0;
-- stopGeneration, durably: the runner sees it at its next flush even when the hub's signal
-- never reaches its process.
ALTER TABLE messages ADD COLUMN stop_requested boolean NOT NULL DEFAULT false;

-- The reaper: unfinished generations by runner.
CREATE INDEX messages_runner_idx ON messages (runner_instance)
    WHERE status IN ('PENDING', 'STREAMING');
