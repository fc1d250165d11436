-- 0010: the tenant's time zone, webhook and idempotent triggers for flows, teams (sqlite).
-- Keep in step with the other backend's 0010.

-- Schedules (cron triggers, later campaigns) are read in this zone.
ALTER TABLE tenants ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';

-- Each flow has its own unguessable webhook URL (`/hooks/flows/{webhook_token}`) and,
-- optionally, an HMAC secret (sealed like plugin secrets) callers must sign with.
ALTER TABLE flows ADD COLUMN webhook_token TEXT;
ALTER TABLE flows ADD COLUMN webhook_secret TEXT;
UPDATE flows SET webhook_token = lower(hex(randomblob(16)));
CREATE UNIQUE INDEX flows_webhook_token ON flows (webhook_token);

-- A trigger's own key for a run (a webhook's Idempotency-Key, a schedule's fire time, a
-- contact event): one run per key and flow, whatever retries or restarts happen.
ALTER TABLE flow_runs ADD COLUMN trigger_key TEXT;
CREATE UNIQUE INDEX flow_runs_trigger_key ON flow_runs (flow_id, trigger_key)
    WHERE trigger_key IS NOT NULL;

-- Teams of agents, for assignment by round-robin (`next_member` turns) or least-busy.
CREATE TABLE teams (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    members      TEXT NOT NULL,
    next_member  INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX conversations_assignee ON conversations (tenant_id, assignee, status);
