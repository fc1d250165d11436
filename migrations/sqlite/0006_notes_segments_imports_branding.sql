-- 0006: notes, segments, imports, white-label branding and message usage (sqlite).
-- Keep in step with the other backend's 0006.

-- When the tenant last sent this contact a message (set by the messaging layer).
ALTER TABLE contacts ADD COLUMN last_contacted_at INTEGER;
CREATE INDEX contacts_last_contacted ON contacts (tenant_id, last_contacted_at);

-- Free-text notes agents keep on a contact; `author_key_id` is the API key that wrote it.
CREATE TABLE contact_notes (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    contact_id    TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    body          TEXT NOT NULL,
    author_key_id TEXT,
    created_at    INTEGER NOT NULL
);
CREATE INDEX contact_notes_contact ON contact_notes (tenant_id, contact_id, id);

-- Saved filter expressions (JSON); members are computed in SQL when asked.
CREATE TABLE segments (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    expression  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX segments_tenant_name ON segments (tenant_id, name);

-- CSV import jobs and their progress. The uploaded file and the rejected-rows CSV live
-- in the data directory under imports/.
CREATE TABLE contact_imports (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    duplicates   TEXT NOT NULL,
    mapping      TEXT NOT NULL,
    rows_read    INTEGER NOT NULL DEFAULT 0,
    created      INTEGER NOT NULL DEFAULT 0,
    updated      INTEGER NOT NULL DEFAULT 0,
    skipped      INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX contact_imports_tenant ON contact_imports (tenant_id, id);

-- White-label branding, shown by resellers (Business tenants) to their own customers.
ALTER TABLE tenants ADD COLUMN brand_name TEXT;
ALTER TABLE tenants ADD COLUMN logo_url TEXT;
ALTER TABLE tenants ADD COLUMN primary_color TEXT;
ALTER TABLE tenants ADD COLUMN custom_domain TEXT;
-- An operator-set request rate (per minute) replacing the plan's, for custom deals.
ALTER TABLE tenants ADD COLUMN requests_per_minute INTEGER;
CREATE UNIQUE INDEX tenants_custom_domain ON tenants (custom_domain);

-- Messages sent per tenant and calendar month (UTC, 'YYYY-MM'), against the plan's
-- monthly allowance.
CREATE TABLE message_usage (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    month       TEXT NOT NULL,
    sent        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
);
