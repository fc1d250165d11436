-- 0007: plugin installs from the marketplace and their encrypted secrets (postgres). Keep
-- in step with the other backend's 0007.

-- One row per install of a plugin by a tenant. `version`/`digest` name the artifact in
-- use; `previous_*` what a rollback returns to. `grants` is the JSON array of capability
-- strings the tenant granted (always covering what the version requests); `config` the
-- JSON object of non-secret settings. Counters are flushed from memory periodically.
CREATE TABLE plugin_installs (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    plugin               TEXT NOT NULL,
    requirement          TEXT NOT NULL,
    version              TEXT NOT NULL,
    digest               TEXT NOT NULL,
    previous_version     TEXT,
    previous_digest      TEXT,
    pinned               BIGINT NOT NULL DEFAULT 0,
    enabled              BIGINT NOT NULL DEFAULT 1,
    grants               TEXT NOT NULL DEFAULT '[]',
    config               TEXT NOT NULL DEFAULT '{}',
    calls                BIGINT NOT NULL DEFAULT 0,
    failures             BIGINT NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_error_at        BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX plugin_installs_tenant ON plugin_installs (tenant_id, id);
CREATE INDEX plugin_installs_plugin ON plugin_installs (plugin);

-- Secret settings, sealed with AES-256-GCM. `key_id` names the operator key that sealed
-- the value, so keys can be rotated (old values re-sealed on start).
CREATE TABLE plugin_install_secrets (
    tenant_id    TEXT NOT NULL,
    install_id   TEXT NOT NULL REFERENCES plugin_installs(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    nonce        BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (install_id, name)
);
CREATE INDEX plugin_install_secrets_tenant ON plugin_install_secrets (tenant_id, install_id);
