-- Who holds the cluster's probe of a source, and since when (`permits.rs`): a probe whose node
-- has gone silent, or restarted since it was granted, is void at once instead of at the end of
-- its lease. NULL for a probe granted before this migration (its lease alone bounds it).
ALTER TABLE sources ADD COLUMN probe_node text;
ALTER TABLE sources ADD COLUMN probe_at timestamptz;
