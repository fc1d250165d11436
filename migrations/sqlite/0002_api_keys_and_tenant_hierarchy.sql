-- 0002: API keys, reseller hierarchy and tenant settings (sqlite).
-- Keep in step with the other backend's 0002.

-- A sub-tenant belongs to a reseller (a Business tenant); NULL for top-level tenants.
ALTER TABLE tenants ADD COLUMN parent_id TEXT REFERENCES tenants(id);
-- Country used to normalize phone numbers written without a country code (ISO 3166-1).
ALTER TABLE tenants ADD COLUMN default_country TEXT NOT NULL DEFAULT 'US';
CREATE INDEX tenants_parent ON tenants (parent_id);

-- Bearer keys. The secret is shown once at creation and stored only as its sha256
-- (keys carry 244 random bits, so a fast hash is enough); `prefix` is the public,
-- non-secret start of the key, shown in listings so users can tell keys apart.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
