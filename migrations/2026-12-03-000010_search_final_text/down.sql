DROP INDEX messages_content_search_idx;
ALTER TABLE messages DROP COLUMN content_search;
ALTER TABLE messages ADD COLUMN content_search tsvector
    GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
CREATE INDEX messages_content_search_idx ON messages USING gin (content_search);
