-- 0001: tenants and the plugin key-value store (SQLite).
-- Conventions for every table: ids are TEXT (UUID v7), times are INTEGER Unix
-- milliseconds, flags are INTEGER 0/1, JSON is TEXT. Keep in step with
-- migrations/postgres/0001_tenants_and_plugin_kv.sql.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL DEFAULT 'starter',
    status      TEXT NOT NULL DEFAULT 'active',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- One row per key of one plugin install of one tenant. The primary key leads with the
-- tenant, then the install: every query is scoped by both and served by this index.
CREATE TABLE plugin_kv (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    install_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, install_id, key)
);
