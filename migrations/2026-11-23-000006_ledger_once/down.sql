DROP INDEX usage_records_message_idx;
