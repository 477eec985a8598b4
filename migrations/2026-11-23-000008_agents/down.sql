DROP INDEX IF EXISTS conversations_agent_idx;
ALTER TABLE conversations
    DROP COLUMN IF EXISTS max_output_tokens,
    DROP COLUMN IF EXISTS temperature,
    DROP COLUMN IF EXISTS agent_id;
DROP TABLE IF EXISTS agents;
