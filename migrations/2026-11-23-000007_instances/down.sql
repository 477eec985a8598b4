DROP INDEX messages_runner_idx;
ALTER TABLE messages DROP COLUMN stop_requested;
ALTER TABLE messages DROP COLUMN content_seq;
ALTER TABLE messages DROP COLUMN runner_instance;
DROP TABLE instances;
