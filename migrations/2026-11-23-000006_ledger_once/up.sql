-- A generation is settled once: a retried or duplicated settlement finds its ledger row and
-- adds nothing.
CREATE UNIQUE INDEX usage_records_message_idx ON usage_records (message_id);
