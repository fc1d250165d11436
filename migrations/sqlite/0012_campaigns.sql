-- 0012: broadcast campaigns (sqlite). Keep in step with the other backend's 0012.

-- A campaign: who (the audience, JSON `{"segments", "tags", "exclude": {"segments",
-- "tags"}}`, filtered by consent for the channel when it runs), through which channel
-- install, when (`schedule_at`, UTC ms), how fast (`throttle_per_minute`, quiet hours
-- JSON `{"start": "21:00", "end": "08:00"}` read in each recipient's time zone), and an
-- optional A/B test (`ab` JSON: test share, metric, duration; `ab_decision` JSON: the
-- winner and the numbers behind it). `status`: draft | scheduled | running | paused |
-- completed | cancelled; `status_reason` says why a campaign paused itself (quota,
-- template no longer approved). The fan-out records how far it got (`fanout_cursor`,
-- the last contact id materialised) in the same transaction as each batch, so a restart
-- continues where it stopped. `generation` grows on every resume: the keys of the
-- recipient jobs queued by a resume carry it.
CREATE TABLE campaigns (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    install_id           TEXT NOT NULL,
    channel              TEXT NOT NULL,
    purpose              TEXT NOT NULL DEFAULT 'marketing',
    audience             TEXT NOT NULL,
    schedule_at          INTEGER,
    throttle_per_minute  INTEGER,
    quiet_hours          TEXT,
    reply_window_ms      INTEGER NOT NULL,
    ab                   TEXT,
    ab_decision          TEXT,
    status               TEXT NOT NULL,
    status_reason        TEXT,
    fanout_cursor        TEXT,
    fanout_done          INTEGER NOT NULL DEFAULT 0,
    generation           INTEGER NOT NULL DEFAULT 0,
    started_at           INTEGER,
    finished_at          INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
CREATE INDEX campaigns_tenant ON campaigns (tenant_id, created_at);

-- What is sent: one row per variant (a campaign without an A/B test has one, `A`), a
-- template of the campaign's install and where each of its variables comes from
-- (`variables` JSON: `{"body": [{"field": "name", "fallback": "there"}, {"value": "X"}],
-- "header": …, "buttons": {"0": …}}`).
CREATE TABLE campaign_variants (
    tenant_id          TEXT NOT NULL,
    campaign_id        TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    position           INTEGER NOT NULL,
    name               TEXT NOT NULL,
    template_name      TEXT NOT NULL,
    template_language  TEXT NOT NULL,
    variables          TEXT NOT NULL,
    PRIMARY KEY (campaign_id, name)
);

-- One row per contact the audience reached, written once (the unique key makes a
-- re-run of the fan-out after a crash add nothing). `state`: held (A/B remainder
-- waiting for the winner) | queued | skipped (with `skip_reason`) | sent (handed to the
-- outbox as `message_id`) | failed (with `error`) | cancelled. Delivery, read and reply
-- come from the message itself.
CREATE TABLE campaign_recipients (
    tenant_id    TEXT NOT NULL,
    campaign_id  TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    contact_id   TEXT NOT NULL,
    variant      TEXT,
    test_group   INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL,
    skip_reason  TEXT,
    message_id   TEXT,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    UNIQUE (campaign_id, contact_id)
);
CREATE INDEX campaign_recipients_state ON campaign_recipients (campaign_id, state, contact_id);
CREATE INDEX campaign_recipients_message ON campaign_recipients (tenant_id, message_id);
