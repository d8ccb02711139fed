-- The readings export trigger exists only while a sink runs (store/sink.rs creates it
-- when `sink_state.enabled` turns 1 and on open, and drops it when it turns 0): its
-- `WHEN` subquery cost every ingested row about a tenth of the insert with no sink.
DROP TRIGGER sink_reading_stored;
