-- When a step's current attempt started, in milliseconds since the Unix epoch: its end computes
-- the duration in the same statement (no read of started_at first). NULL for steps started
-- before this column existed; their duration stays unknown.
ALTER TABLE steps ADD COLUMN started_ms BIGINT;
