-- Monitoring (issue 7): gateway and meter state as the monitor folds it, and alarms
-- with their lifecycle. Instants are UTC Unix seconds.

-- One row per gateway heard from; `state_json` is monitor::GatewayState.
CREATE TABLE monitor_gateways (
    id TEXT PRIMARY KEY,
    state_json TEXT NOT NULL,
    updated BIGINT NOT NULL
);

-- One row per meter read (good or failed); `state_json` is monitor::MeterState.
CREATE TABLE monitor_meters (
    meter TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    state_json TEXT NOT NULL,
    updated BIGINT NOT NULL
);

-- Alarms: opened, possibly updated (new figures), cleared. At most one open alarm per
-- key (the partial unique index is the dedup); cleared ones stay as history.
CREATE TABLE alarms (
    id INTEGER PRIMARY KEY,
    alarm_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    household TEXT,
    meter TEXT,
    gateway TEXT,
    district TEXT,
    village TEXT,
    reason TEXT NOT NULL,
    opened BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    cleared BIGINT
);
CREATE UNIQUE INDEX alarms_open_key ON alarms (alarm_key) WHERE cleared IS NULL;
CREATE INDEX alarms_kind ON alarms (kind, opened);
