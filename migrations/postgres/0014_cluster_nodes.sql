-- The nodes (server processes) sharing this database, each seen within the last few
-- seconds: rates that are per node (a phone number's sends, a throttled campaign's) are
-- divided between the live ones, so together they keep the configured rate.
CREATE TABLE cluster_nodes (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
