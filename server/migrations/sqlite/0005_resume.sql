-- Incremental recompute (issue 4): a dirty mark remembers the earliest instant of the
-- readings that made it (`since`; NULL: recompute the whole season), and each
-- (household, season) keeps the state a recompute resumes from (engine/resume.rs:
-- every listed night's figures and the judging states at the latest nights' opens).

ALTER TABLE dirty ADD COLUMN since BIGINT;

CREATE TABLE season_state (
    household TEXT NOT NULL,
    season TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (household, season)
);
