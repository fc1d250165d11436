-- 0008: the durable job queue, conversations and messages, message templates, outbound
-- webhooks to tenants (sqlite). Keep in step with the other backend's 0008.

-- The durable job queue. `state`: queued | running | done | dead | cancelled. A job is
-- due when it is queued or running (lease expired) and `run_at` has passed; claiming a
-- job sets `run_at` to the lease's end, so an expired lease makes it due again.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT,
    queue            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_owner      TEXT,
    last_error       TEXT,
    idempotency_key  TEXT UNIQUE,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX jobs_due ON jobs (priority DESC, run_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- One conversation per (channel install, contact). The customer-service window is open
-- until `window_expires_at` (24 h after the contact's last message).
CREATE TABLE conversations (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    install_id         TEXT NOT NULL,
    channel            TEXT NOT NULL,
    contact_id         TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'open',
    assignee           TEXT,
    unread             INTEGER NOT NULL DEFAULT 0,
    window_expires_at  INTEGER,
    last_message_at    INTEGER NOT NULL,
    last_inbound_at    INTEGER,
    last_inbound_provider_id TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (tenant_id, install_id, contact_id)
);
CREATE INDEX conversations_list ON conversations (tenant_id, last_message_at);
CREATE INDEX conversations_contact ON conversations (tenant_id, contact_id);

-- Messages in and out. `status` of an outbound message moves monotonically by `status_rank`
-- (queued 0, accepted 1, sent 2, delivered 3, read 4; failed 9 and refused 9 end it).
CREATE TABLE messages (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_id      TEXT NOT NULL,
    contact_id           TEXT NOT NULL,
    install_id           TEXT NOT NULL,
    direction            TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    content              TEXT NOT NULL,
    provider_message_id  TEXT,
    reply_to             TEXT,
    status               TEXT NOT NULL,
    status_rank          INTEGER NOT NULL,
    error                TEXT,
    purpose              TEXT NOT NULL DEFAULT 'service',
    idempotency_key      TEXT,
    request_hash         TEXT,
    sent_by              TEXT,
    provider_at          INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    sent_at              INTEGER,
    delivered_at         INTEGER,
    read_at              INTEGER,
    failed_at            INTEGER
);
CREATE UNIQUE INDEX messages_provider ON messages (tenant_id, install_id, provider_message_id);
CREATE UNIQUE INDEX messages_idempotency ON messages (tenant_id, idempotency_key);
CREATE INDEX messages_conversation ON messages (tenant_id, conversation_id, created_at);

-- Every status change an outbound message went through, in arrival order.
CREATE TABLE message_status_history (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    provider_at    INTEGER,
    error          TEXT,
    recorded_at    INTEGER NOT NULL
);
CREATE INDEX message_status_history_message ON message_status_history (tenant_id, message_id);

-- Status webhooks for a provider id PostDog has not stored yet (a status can overtake
-- the send's acknowledgement); applied when the receipt is stored.
CREATE TABLE early_statuses (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL,
    install_id           TEXT NOT NULL,
    provider_message_id  TEXT NOT NULL,
    status               TEXT NOT NULL,
    provider_at          INTEGER,
    error                TEXT,
    recorded_at          INTEGER NOT NULL
);
CREATE INDEX early_statuses_lookup ON early_statuses (tenant_id, install_id, provider_message_id);

-- Internal notes agents keep on a conversation.
CREATE TABLE conversation_notes (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    body             TEXT NOT NULL,
    author           TEXT,
    created_at       INTEGER NOT NULL
);
CREATE INDEX conversation_notes_conversation ON conversation_notes (tenant_id, conversation_id);

-- Per-tenant messaging settings (opt-out / opt-in keywords).
CREATE TABLE messaging_settings (
    tenant_id          TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    opt_out_keywords   TEXT NOT NULL,
    opt_in_keywords    TEXT NOT NULL,
    updated_at         INTEGER NOT NULL
);

-- Message templates per channel install: the structured model (`spec`, JSON), the
-- provider's review state and id.
CREATE TABLE message_templates (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    install_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    language        TEXT NOT NULL,
    category        TEXT NOT NULL,
    spec            TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT,
    provider_id     TEXT,
    submitted_at    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (tenant_id, install_id, name, language)
);

-- Tenants' webhook endpoints (Standard Webhooks). `secret` is sealed like plugin secrets;
-- `previous_secret` still signs during a rotation until `previous_expires_at`.
CREATE TABLE webhook_endpoints (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    url                  TEXT NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    events               TEXT NOT NULL,
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  INTEGER,
    enabled              INTEGER NOT NULL DEFAULT 1,
    disabled_reason      TEXT,
    failing_since        INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id);

-- One event to deliver to one endpoint; state pending | delivered | failed.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (tenant_id, endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    attempted_at    INTEGER NOT NULL,
    status_code     INTEGER,
    error           TEXT,
    duration_ms     INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (tenant_id, delivery_id);
