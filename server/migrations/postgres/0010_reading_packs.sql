-- Reading packs (store/packs.rs): a read cache for recompute rounds. Each meter's readings
-- of a closed 16-day chunk packed as one varint blob, so a season is read as a few rows a
-- meter instead of a row a reading. The readings table stays the record.
CREATE TABLE reading_packs (
    meter TEXT NOT NULL,
    chunk BIGINT NOT NULL,           -- floor(ts / 1,382,400 s)
    n BIGINT NOT NULL,               -- readings in the pack
    data BYTEA NOT NULL,
    PRIMARY KEY (meter, chunk)
);

-- Every reading of `meter` with ts < upto is in its packs (a chunk without a pack has none).
CREATE TABLE pack_cover (
    meter TEXT PRIMARY KEY,
    upto BIGINT NOT NULL
);

-- The highest `upto` any packing has used: a new reading below it may fall into a pack.
INSERT INTO meta (key, value) VALUES ('pack_horizon', -9223372036854775808);
