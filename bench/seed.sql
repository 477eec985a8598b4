-- Seeds the personal workspace of the account :'email' with :conversations conversations of
-- :per_conversation messages each (a simple USER/ASSISTANT chain), keeping what the server
-- keeps on every write consistent: seq and depth along the chain, parent links, the active
-- leaf, message_count, preview (the leaf's first 200 characters), last_message_at, sort_at
-- and last_seq. Ids are derived from md5(conversation id, seq) so parents can be named in the
-- same statement (foreign keys are checked at the end of the statement; the active-leaf key
-- at commit).
--
--   psql -v email=reader@bench.test -v conversations=10000 -v per_conversation=20 -f seed.sql

\set ON_ERROR_STOP on

BEGIN;

CREATE TEMP TABLE bench_owner ON COMMIT DROP AS
SELECT w.id AS workspace_id, u.id AS user_id
FROM users u
JOIN workspaces w ON w.created_by = u.id AND w.personal
WHERE u.email = :'email';

DO $$
BEGIN
    IF (SELECT count(*) FROM bench_owner) <> 1 THEN
        RAISE EXCEPTION 'seed: no account with a personal workspace for the given email';
    END IF;
END
$$;

-- Conversation g's last message is g minutes old, so the listing order is g.
CREATE TEMP TABLE bench_conversations ON COMMIT DROP AS
SELECT gen_random_uuid() AS id,
       g,
       now() - make_interval(mins => g) - make_interval(mins => :per_conversation) AS started_at
FROM generate_series(1, :conversations) AS g;

CREATE TEMP TABLE bench_messages ON COMMIT DROP AS
SELECT md5(c.id::text || ':' || s)::uuid AS id,
       c.id AS conversation_id,
       CASE WHEN s > 1 THEN md5(c.id::text || ':' || (s - 1))::uuid END AS parent_id,
       s AS seq,
       CASE WHEN s % 2 = 1 THEN 'USER' ELSE 'ASSISTANT' END AS role,
       CASE WHEN s % 2 = 1
            THEN format('Question %s in conversation %s: how would you plan a three-day trip to Lisbon on a budget, with a day for Sintra?', s, c.g)
            ELSE format('Answer %s in conversation %s: start in Alfama and Baixa, take the train to Sintra on the second day for Pena Palace and Quinta da Regaleira, and keep the third for Belém, the riverside and a fado evening. Budget about 80 euros a day.', s, c.g)
       END AS content,
       c.started_at + make_interval(mins => s) AS created_at
FROM bench_conversations c, generate_series(1, :per_conversation) AS s;

INSERT INTO conversations (id, workspace_id, created_by, title, model, active_leaf_id,
                           message_count, preview, last_message_at, sort_at, last_seq,
                           created_at, updated_at)
SELECT c.id, o.workspace_id, o.user_id, format('Trip plans %s', c.g), 'local/echo', leaf.id,
       leaf.seq, left(leaf.content, 200), leaf.created_at, leaf.created_at, leaf.seq,
       c.started_at, leaf.created_at
FROM bench_conversations c
CROSS JOIN bench_owner o
JOIN bench_messages leaf ON leaf.conversation_id = c.id AND leaf.seq = :per_conversation;

INSERT INTO messages (id, conversation_id, parent_id, seq, depth, role, content, status, model,
                      prompt_tokens, completion_tokens, cost_micro_usd, created_by, created_at,
                      updated_at, completed_at, content_seq)
SELECT m.id, m.conversation_id, m.parent_id, m.seq, m.seq, m.role, m.content, 'COMPLETE',
       CASE WHEN m.role = 'ASSISTANT' THEN 'local/echo' END,
       CASE WHEN m.role = 'ASSISTANT' THEN 40 END,
       CASE WHEN m.role = 'ASSISTANT' THEN 50 END,
       CASE WHEN m.role = 'ASSISTANT' THEN 0 END,
       CASE WHEN m.role = 'USER' THEN o.user_id END,
       m.created_at, m.created_at, m.created_at,
       CASE WHEN m.role = 'ASSISTANT' THEN 1 ELSE 0 END
FROM bench_messages m CROSS JOIN bench_owner o;

COMMIT;

ANALYZE conversations;
ANALYZE messages;

SELECT count(*) AS conversations, sum(message_count) AS messages
FROM conversations
WHERE workspace_id = (SELECT w.id FROM users u JOIN workspaces w ON w.created_by = u.id AND w.personal WHERE u.email = :'email');
