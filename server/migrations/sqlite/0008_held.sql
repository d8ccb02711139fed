-- Readings held back because the registry did not bind them when they arrived (their
-- quarantine row says why: unknown_gateway, unbound_meter, spoofed, unbound,
-- before_install). A later registry change can admit them: server/src/replay.rs checks
-- every row whose `checked` (the registry version it was last checked against) is
-- older than the registry's, stores those it binds now as readings and deletes them here.
-- Kept in step between migrations/sqlite and migrations/postgres.
CREATE TABLE held_readings (
    gateway TEXT NOT NULL,
    meter TEXT NOT NULL,
    ts BIGINT NOT NULL,
    e_wh BIGINT NOT NULL,
    e_valley_wh BIGINT,
    p_w BIGINT,
    meter_ts BIGINT,
    received BIGINT NOT NULL,
    reason TEXT NOT NULL,
    checked BIGINT NOT NULL,
    PRIMARY KEY (gateway, meter, ts)
) WITHOUT ROWID;
CREATE INDEX held_readings_checked ON held_readings (checked);
