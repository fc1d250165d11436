-- 0009: automation flows (sqlite). Keep in step with the other backend's 0009.

-- A flow: its editable draft graph (JSON) and the newest published version.
CREATE TABLE flows (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    draft              TEXT NOT NULL,
    published_version  INTEGER,
    enabled            INTEGER NOT NULL DEFAULT 1,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX flows_tenant ON flows (tenant_id, id);

-- Immutable published versions: the graph and the install each node runs on.
CREATE TABLE flow_versions (
    tenant_id     TEXT NOT NULL,
    flow_id       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    graph         TEXT NOT NULL,
    actions       TEXT NOT NULL,
    published_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, version)
);

-- Runs: one contact going through one version. `exclusive` runs (flows without
-- re-entry) are unique per flow and contact while active.
CREATE TABLE flow_runs (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    flow_id        TEXT NOT NULL,
    version        INTEGER NOT NULL,
    contact_id     TEXT,
    exclusive      INTEGER NOT NULL,
    status         TEXT NOT NULL,
    trigger        TEXT NOT NULL,
    variables      TEXT NOT NULL,
    current_node   TEXT,
    visit          INTEGER NOT NULL DEFAULT 0,
    waiting_for    TEXT,
    wait_until     INTEGER,
    error          TEXT,
    started_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER
);
CREATE INDEX flow_runs_flow ON flow_runs (tenant_id, flow_id, started_at);
CREATE INDEX flow_runs_waiting ON flow_runs (tenant_id, contact_id, waiting_for);
CREATE UNIQUE INDEX flow_runs_active ON flow_runs (flow_id, contact_id)
    WHERE exclusive = 1 AND status IN ('running', 'waiting');

-- Each step a run took: input, output, outcome, effects, timing, error.
CREATE TABLE flow_steps (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    visit         INTEGER NOT NULL,
    status        TEXT NOT NULL,
    input         TEXT NOT NULL,
    output        TEXT,
    outcome       TEXT,
    effects       TEXT,
    error         TEXT,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER NOT NULL,
    UNIQUE (run_id, visit)
);
CREATE INDEX flow_steps_run ON flow_steps (tenant_id, run_id, visit);
