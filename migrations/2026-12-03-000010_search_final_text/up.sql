-- A message's text is indexed for search once it is final. While a generation streams, its
-- partial text is written about once a second; regenerating the tsvector and its GIN entries
-- on every such write cost more than the write itself, and a half-written answer is not
-- worth finding.
DROP INDEX messages_content_search_idx;
ALTER TABLE messages DROP COLUMN content_search;
ALTER TABLE messages ADD COLUMN content_search tsvector GENERATED ALWAYS AS (
    CASE WHEN status IN ('PENDING', 'STREAMING') THEN NULL
         ELSE to_tsvector('english', content) END
) STORED;
CREATE INDEX messages_content_search_idx ON messages USING gin (content_search);
