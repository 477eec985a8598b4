ALTER TABLE conversations DROP CONSTRAINT conversations_active_leaf_fk;
DROP TABLE messages;
DROP TABLE conversations;
