-- Replicas share the recompute work (issue 10): a replica claims a round of dirty marks
-- for a while (`claimed_until`, the database's clock, Unix seconds) with
-- `FOR UPDATE SKIP LOCKED`, so two replicas never take the same pairs; a claim lapses if
-- its replica dies, and a new mark clears it (the pair is worth taking again at once).
ALTER TABLE dirty ADD COLUMN claimed_until BIGINT;
CREATE INDEX dirty_unclaimed ON dirty (claimed_until);

-- Claiming must not look like a new mark: only writes of `gen` draw a new generation.
DROP TRIGGER dirty_gen ON dirty;
CREATE TRIGGER dirty_gen BEFORE INSERT OR UPDATE OF gen ON dirty
FOR EACH ROW EXECUTE FUNCTION dirty_next_gen();
