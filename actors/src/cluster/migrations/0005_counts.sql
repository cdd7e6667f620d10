-- Warden's cluster store, version 5: the leader counts the unfinished jobs and publishes the
-- counts here (one row), so the other nodes' heartbeats read one row instead of each running
-- the same GROUP BY over the backlog.

CREATE TABLE counts (
    id         smallint    PRIMARY KEY CHECK (id = 1),
    -- [[pipeline, state, priority, n], ...]
    groups     jsonb       NOT NULL,
    counted_at timestamptz NOT NULL
);
