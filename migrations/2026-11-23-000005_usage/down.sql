DROP TABLE usage_records;
DROP TABLE quota_reservations;
ALTER TABLE workspace_members
    DROP COLUMN token_limit,
    DROP COLUMN tokens_used,
    DROP COLUMN tokens_reserved,
    DROP COLUMN period_start;
