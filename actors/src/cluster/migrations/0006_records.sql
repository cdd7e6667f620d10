-- Warden's cluster store, version 6: the records tasks store (built-in sources, exec tasks'
-- `record` lines, custom tasks), for every node. A record is written in the same statement as
-- the fenced completion of the attempt that stored it, so a completion fenced out (the job was
-- rescued or cancelled meanwhile) writes none. Keys sort bytewise ("C"), as in a single node's
-- journal, so `records` pages the same way in both modes and a prefix is an index range.

CREATE TABLE records (
    key        text COLLATE "C" PRIMARY KEY,
    value      jsonb       NOT NULL,
    -- The job whose completion last changed the value.
    job_id     uuid        NOT NULL,
    -- When the value last changed (storing the same value again changes nothing).
    updated_at timestamptz NOT NULL DEFAULT now()
);
