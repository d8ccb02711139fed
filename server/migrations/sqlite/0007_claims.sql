-- Kept in step with migrations/postgres/0007: the claim of a round of dirty marks by one
-- replica. One SQLite process has no one to share with; the column stays NULL.
ALTER TABLE dirty ADD COLUMN claimed_until BIGINT;
