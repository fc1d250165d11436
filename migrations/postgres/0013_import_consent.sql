-- Import jobs count the opt-ins they did not record because the contact had opted out
-- (an import never re-subscribes).
ALTER TABLE contact_imports ADD COLUMN opt_ins_refused BIGINT NOT NULL DEFAULT 0;
