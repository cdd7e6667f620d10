-- Warden's cluster store, version 3: the settings every node of a cluster must agree on (a
-- pipeline's rate limit and retry policy), as the first node recorded them.

CREATE TABLE settings (
    key         text        PRIMARY KEY,
    value       text        NOT NULL,
    by_node     text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
