-- Qingnuan store, version 1. Instants are UTC Unix seconds, energies Wh, money fen,
-- nights and seasons their contract names ('2025-11-01', '2025-2026').
-- Only standard SQL that SQLite and PostgreSQL both run, except WITHOUT ROWID
-- (dropped in the PostgreSQL migrations).

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('registry_version', 0);

CREATE TABLE households (
    id TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    town TEXT NOT NULL,
    village TEXT NOT NULL,
    heating_area_m2 TEXT NOT NULL,
    device TEXT NOT NULL,
    max_power_w BIGINT              -- NULL: the policy's default
);
CREATE INDEX households_place ON households (district, village);

-- One row per (household, meter): a replaced meter is a second row.
CREATE TABLE meters (
    household TEXT NOT NULL REFERENCES households (id),
    meter TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_to BIGINT,                -- NULL: still installed
    gateway TEXT NOT NULL,
    PRIMARY KEY (household, meter)
);
CREATE INDEX meters_by_meter ON meters (meter);
CREATE INDEX meters_by_gateway ON meters (gateway);

CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    state TEXT,                     -- online | offline | NULL (never heard)
    last_seen BIGINT,               -- server clock
    status_json TEXT
);

-- Valid readings, first value kept per (meter, ts).
CREATE TABLE readings (
    meter TEXT NOT NULL,
    ts BIGINT NOT NULL,
    e_wh BIGINT NOT NULL,
    e_valley_wh BIGINT,
    p_w BIGINT,
    meter_ts BIGINT,
    gateway TEXT NOT NULL,
    received BIGINT NOT NULL,
    PRIMARY KEY (meter, ts)
) WITHOUT ROWID;

-- A later value for a (meter, ts) already stored with another value.
CREATE TABLE reading_conflicts (
    meter TEXT NOT NULL,
    ts BIGINT NOT NULL,
    e_wh BIGINT NOT NULL,
    e_valley_wh BIGINT NOT NULL,    -- -1: absent
    gateway TEXT NOT NULL,
    received BIGINT NOT NULL,
    PRIMARY KEY (meter, ts, e_wh, e_valley_wh)
);

-- Reads the gateway reported as failed (`err`).
CREATE TABLE read_failures (
    meter TEXT NOT NULL,
    ts BIGINT NOT NULL,
    err TEXT NOT NULL,
    gateway TEXT NOT NULL,
    PRIMARY KEY (meter, ts)
);

-- Whatever failed validation; `msg_key` (hash of topic and payload) with `item`
-- (reading index, -1 for the whole message) makes a redelivery count once.
CREATE TABLE quarantine (
    msg_key TEXT NOT NULL,
    item BIGINT NOT NULL,
    received BIGINT NOT NULL,
    topic TEXT NOT NULL,
    gateway TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload TEXT NOT NULL,          -- the first KiB, lossy UTF-8
    PRIMARY KEY (msg_key, item)
);
CREATE INDEX quarantine_reason ON quarantine (reason);

-- (household, season) pairs whose figures need recomputing; `gen` grows with every
-- mark so that a recompute only clears the mark it saw.
CREATE TABLE dirty (
    household TEXT NOT NULL,
    season TEXT NOT NULL,
    gen BIGINT NOT NULL,
    PRIMARY KEY (household, season)
);

CREATE TABLE nights (
    household TEXT NOT NULL,
    night TEXT NOT NULL,
    season TEXT NOT NULL,
    wh BIGINT NOT NULL,
    quality TEXT NOT NULL,          -- actual | estimated | missing
    flags TEXT NOT NULL,            -- JSON array of strings
    detail TEXT NOT NULL,           -- JSON: how the figure was obtained
    PRIMARY KEY (household, night)
);
CREATE INDEX nights_season ON nights (household, season);

CREATE TABLE statements (
    household TEXT NOT NULL,
    season TEXT NOT NULL,
    offpeak_wh BIGINT NOT NULL,
    subsidised_wh BIGINT NOT NULL,
    cap_wh BIGINT NOT NULL,
    cap_reached_on TEXT,
    city_fen BIGINT NOT NULL,
    district_fen BIGINT NOT NULL,
    valley_charge_fen BIGINT NOT NULL,
    nights_actual BIGINT NOT NULL,
    nights_estimated BIGINT NOT NULL,
    nights_missing BIGINT NOT NULL,
    flags TEXT NOT NULL,            -- JSON array of strings
    computed_at BIGINT NOT NULL,
    PRIMARY KEY (household, season)
);
CREATE INDEX statements_season ON statements (season);

-- Every registry change: who, when, what before and after (JSON).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    source TEXT NOT NULL,
    entity TEXT NOT NULL,           -- household | meter | gateway
    entity_key TEXT NOT NULL,
    action TEXT NOT NULL,           -- insert | update
    before_json TEXT,
    after_json TEXT NOT NULL
);
