-- 0011: when the outbox last handed a message to its provider without learning the
-- outcome (postgres). Keep in step with the other backend's 0011.
-- Set just before the provider call, cleared when the provider answers; a message still
-- queued with it set had an attempt interrupted (a crash, a timeout) after which the
-- provider may have accepted it: the outbox waits for a status echoing the message id
-- before it sends again.
ALTER TABLE messages ADD COLUMN send_attempted_at BIGINT;
