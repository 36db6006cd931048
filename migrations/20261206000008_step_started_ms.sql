-- Times in milliseconds since the Unix epoch beside the text timestamps, so that the end of a
-- step or run computes its duration in the statement that records it (no read first):
-- when a step's current attempt started, and when a run was created and started. NULL for
-- rows written before these columns existed; their durations stay unknown.
ALTER TABLE steps ADD COLUMN started_ms BIGINT;
ALTER TABLE runs ADD COLUMN created_ms BIGINT;
ALTER TABLE runs ADD COLUMN started_ms BIGINT;
