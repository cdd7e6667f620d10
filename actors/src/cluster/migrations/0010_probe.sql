-- One probe for the cluster once a shared breaker's open window ends (`permits.rs`): until
-- when the probe granted last may be out. Cleared when the breaker closes or opens again.
ALTER TABLE sources ADD COLUMN probe_until timestamptz;
