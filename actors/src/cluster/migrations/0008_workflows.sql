-- Workflows in cluster mode (`workflows.rs`). A step that must wait is a pending job whose
-- run_at is 'infinity': no claim reaches it (`run_at <= now()`), and the leader releases it.
CREATE TABLE workflows (
    id             uuid        PRIMARY KEY,
    kind           text        NOT NULL CHECK (kind IN ('chain', 'group')),
    -- The steps (chain) or members (group), in order.
    steps          uuid[]      NOT NULL,
    -- A group's final job.
    then_id        uuid,
    allow_failures boolean     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Set by the leader once nothing is left to release or cancel.
    finished_at    timestamptz
);
CREATE INDEX workflows_open ON workflows (id) WHERE finished_at IS NULL;
CREATE INDEX workflows_finished ON workflows (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_workflow ON jobs (workflow_id) WHERE workflow_id IS NOT NULL;
