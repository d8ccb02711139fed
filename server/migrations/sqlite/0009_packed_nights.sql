-- Computed nights, one row per (household, season) instead of one per night: the
-- figures packed as a varint blob (store/nights.rs), the rare explanations apart.
-- A season of 152 nights made writing night rows most of a whole-season recompute.
-- The old rows move over when the server starts (store/nights.rs convert_legacy).
ALTER TABLE nights RENAME TO nights_legacy;
DROP INDEX nights_season;

CREATE TABLE season_nights (
    household TEXT NOT NULL,
    season TEXT NOT NULL,
    packed BLOB NOT NULL,            -- every listed night: date, Wh, quality, flags
    PRIMARY KEY (household, season)
) WITHOUT ROWID;

-- The JSON explanation of the nights that have one (readings set aside near them).
CREATE TABLE night_details (
    household TEXT NOT NULL,
    night TEXT NOT NULL,
    season TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (household, night)
);
CREATE INDEX night_details_season ON night_details (season, household);
