-- 0001: tenants and the plugin key-value store (PostgreSQL).
-- Conventions for every table: ids are TEXT (UUID v7), times are BIGINT Unix
-- milliseconds, flags are BIGINT 0/1, JSON is TEXT. Keep in step with
-- migrations/sqlite/0001_tenants_and_plugin_kv.sql.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL DEFAULT 'starter',
    status      TEXT NOT NULL DEFAULT 'active',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- One row per key of one plugin install of one tenant. The primary key leads with the
-- tenant, then the install: every query is scoped by both and served by this index.
-- COLLATE "C" gives byte order, the same order SQLite uses, for list-keys.
CREATE TABLE plugin_kv (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    install_id  TEXT NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, install_id, key)
);
