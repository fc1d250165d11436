-- 0005: custom field definitions per tenant (sqlite). Keep in step with the other backend's 0005.
-- `kind` is text, number, date, boolean or select; `options` (JSON array) lists the
-- allowed values of a select field.
CREATE TABLE custom_fields (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    label       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    options     TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
