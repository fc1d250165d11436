-- 0004: audit log and consent history (sqlite). Keep in step with the other backend's 0004.

-- One row per state-changing API call: who (key), what (method, route, resource),
-- when, and the outcome. Append-only.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    api_key_id  TEXT,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

-- Consent is an append-only history per contact and channel; the current state is the
-- latest entry. `proof` holds what the tenant can show (a form id, a message id, …).
CREATE TABLE contact_consent (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    channel     TEXT NOT NULL,
    status      TEXT NOT NULL,
    source      TEXT NOT NULL,
    proof       TEXT,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX contact_consent_contact ON contact_consent (tenant_id, contact_id, channel, id);
