DROP TABLE message_votes;
DROP TABLE comparison_entries;
DROP TABLE comparisons;
ALTER TABLE messages DROP COLUMN first_token_at;
