-- The InfluxDB sink (issue 8): what is still to be exported, tailed from the store.
-- Triggers fill the queues, so ingest and recompute need not know that a sink exists;
-- they only fire while `sink_state.enabled` is 1 (set on start when `[influxdb]` is
-- configured). Trigger bodies are SQLite's; a PostgreSQL store writes the same three
-- triggers as trigger functions.

-- 'enabled': 1 while a sink runs; 'readings_dropped', 'nights_dropped': totals skipped
-- because the backlog outgrew its bound (or the database refused them).
CREATE TABLE sink_state (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO sink_state (key, value) VALUES ('enabled', 0);
INSERT INTO sink_state (key, value) VALUES ('readings_dropped', 0);
INSERT INTO sink_state (key, value) VALUES ('nights_dropped', 0);

-- Stored readings not yet exported, in commit order (`seq` only grows: rows leave from
-- the head, so `MAX(seq) - MIN(seq) + 1` is the depth).
CREATE TABLE sink_readings (
    seq INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    ts BIGINT NOT NULL
);

CREATE TRIGGER sink_reading_stored AFTER INSERT ON readings
WHEN (SELECT value FROM sink_state WHERE key = 'enabled') = 1
BEGIN
    INSERT INTO sink_readings (meter, ts) VALUES (NEW.meter, NEW.ts);
END;

-- (household, season) pairs whose nights were recomputed since the sink looked; `gen`
-- grows with every mark so the sink clears only the mark it saw (as `dirty` does).
CREATE TABLE sink_seasons (
    household TEXT NOT NULL,
    season TEXT NOT NULL,
    gen BIGINT NOT NULL,
    PRIMARY KEY (household, season)
);

CREATE TRIGGER sink_statement_inserted AFTER INSERT ON statements
WHEN (SELECT value FROM sink_state WHERE key = 'enabled') = 1
BEGIN
    INSERT INTO sink_seasons (household, season, gen) VALUES (NEW.household, NEW.season, 1)
    ON CONFLICT (household, season) DO UPDATE SET gen = sink_seasons.gen + 1;
END;

CREATE TRIGGER sink_statement_updated AFTER UPDATE ON statements
WHEN (SELECT value FROM sink_state WHERE key = 'enabled') = 1
BEGIN
    INSERT INTO sink_seasons (household, season, gen) VALUES (NEW.household, NEW.season, 1)
    ON CONFLICT (household, season) DO UPDATE SET gen = sink_seasons.gen + 1;
END;

-- Each night as last exported: a recomputed night is written again only when its
-- figure or quality changed.
CREATE TABLE sink_nights (
    household TEXT NOT NULL,
    night TEXT NOT NULL,
    wh BIGINT NOT NULL,
    quality TEXT NOT NULL,
    PRIMARY KEY (household, night)
);
