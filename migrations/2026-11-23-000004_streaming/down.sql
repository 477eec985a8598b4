DROP TABLE jobs;
DROP INDEX messages_unfinished_idx;
DROP INDEX messages_client_id_idx;
ALTER TABLE messages DROP COLUMN client_message_id;
