-- Warden's cluster store, version 1. Runs with search_path set to the store's schema
-- (`[store] schema`). Times that decide anything (run_at, heartbeats, leases) are the
-- database's clock, never a node's; `history` is the job's event list, as `warden history`
-- shows it.

CREATE TABLE jobs (
    id               uuid        PRIMARY KEY,
    name             text        NOT NULL,
    pipeline         text        NOT NULL,
    -- 0 high, 1 normal, 2 low: ascending order is the run order.
    priority         smallint    NOT NULL,
    state            text        NOT NULL CHECK (state IN
                         ('pending', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- Attempts started (counted against max_retries; an operator's retry resets it).
    attempt          integer     NOT NULL DEFAULT 0,
    -- Claims made, never reset: with claimed_by, the fence of every completion.
    claim_no         bigint      NOT NULL DEFAULT 0,
    max_retries      integer     NOT NULL,
    params           text        NOT NULL,
    result           text,
    error            text,
    unique_key       text,
    parent_id        uuid,
    workflow_id      uuid,
    claimed_by       text,
    claimed_at       timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    history          jsonb       NOT NULL DEFAULT '[]'
);
-- The claim's index: only runnable jobs, in run order. A retrying job is claimable once its
-- run_at passes, so nothing has to move it back to pending.
CREATE INDEX jobs_claimable ON jobs (pipeline, priority, run_at, id)
    WHERE state IN ('pending', 'retrying');
-- A key names at most one unfinished job.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running', 'retrying');
-- Listings (newest first) and the rescue of a silent node's jobs.
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_name_id ON jobs (name, id);
CREATE INDEX jobs_running_by ON jobs (claimed_by) WHERE state = 'running';
-- Compaction of finished jobs past their retention.
CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL;

-- Pipelines paused by an operator, for every node.
CREATE TABLE paused_pipelines (
    pipeline  text        PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    by_node   text        NOT NULL
);

-- One row per node, upserted at every heartbeat.
CREATE TABLE nodes (
    id          text        PRIMARY KEY,
    incarnation uuid        NOT NULL,
    admin       text        NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    running     integer     NOT NULL DEFAULT 0
);

-- Leases: `leader` is the one that rescues, promotes and compacts.
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Each schedule tick fires once, whichever node fires it first.
CREATE TABLE schedule_ticks (
    schedule text        NOT NULL,
    tick     timestamptz NOT NULL,
    job_id   uuid        NOT NULL,
    node     text        NOT NULL,
    PRIMARY KEY (schedule, tick)
);
