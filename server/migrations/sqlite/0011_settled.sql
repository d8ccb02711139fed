-- Bounded state (docs/bounded-state.md): readings before `settled_before` have been
-- thinned to the ones the figures rest on, so ingest refuses readings below it (quarantine
-- reason `settled`) and registry imports refuse changes that reach before it.
-- `settled_policy`: a fingerprint of the policy the cut was settled with.
INSERT INTO meta (key, value) VALUES ('settled_before', -9223372036854775808);
INSERT INTO meta (key, value) VALUES ('settled_policy', 0);
