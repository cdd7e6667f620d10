-- Batch jobs that fan out in cluster mode (`fanout.rs`): the leader looks for waiting parents
-- with no unfinished child, then reads the children of those it finishes.
CREATE INDEX jobs_unfinished_children ON jobs (parent_id)
    WHERE parent_id IS NOT NULL AND state IN ('pending', 'running', 'retrying');
CREATE INDEX jobs_children ON jobs (parent_id) WHERE parent_id IS NOT NULL;
