-- 0003: contacts and their tags (postgres). Keep in step with the other backend's 0003.

-- Phone numbers are stored in E.164, emails lower-cased; each is unique per tenant
-- (NULLs do not collide). Custom field values are a JSON object in `fields`.
CREATE TABLE contacts (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT,
    phone       TEXT,
    email       TEXT,
    fields      TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX contacts_tenant_phone ON contacts (tenant_id, phone);
CREATE UNIQUE INDEX contacts_tenant_email ON contacts (tenant_id, email);
CREATE INDEX contacts_tenant_id ON contacts (tenant_id, id);

-- Tags in their own table so segments can filter on them with an index.
CREATE TABLE contact_tags (
    tenant_id   TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    PRIMARY KEY (tenant_id, contact_id, tag)
);
CREATE INDEX contact_tags_tag ON contact_tags (tenant_id, tag);
