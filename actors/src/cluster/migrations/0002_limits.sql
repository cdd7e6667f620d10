-- Warden's cluster store, version 2: the per-source rate limits every node shares. A permit is
-- a row of `grants`, inserted while the source's row is locked, so two nodes never count the
-- same free slot; a throttle pause (a 429, a spent daily quota) is the source's `paused_until`,
-- which every node reads before granting.

CREATE TABLE sources (
    name         text        PRIMARY KEY,
    paused_until timestamptz
);

CREATE TABLE grants (
    source text        NOT NULL,
    at     timestamptz NOT NULL,
    node   text        NOT NULL
);
CREATE INDEX grants_source_at ON grants (source, at);
