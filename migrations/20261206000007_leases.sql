-- Several engines on one database. An engine is a process that executes runs (`kiln serve`,
-- `kiln run`, `kiln resume`...); it registers here and renews itself: `expires_ms` (the
-- database's clock, milliseconds since the Unix epoch) moves forward with every renewal. A run
-- is executed by the engine that holds its lease, `runs.lease_owner`: the lease is valid while
-- that engine is not stopped and has not expired, so one renewal (one row) keeps all of an
-- engine's leases, and renewing never locks a run's row. Each acquisition of a run's lease
-- increments `lease_epoch`, the fencing token every write of the run's state checks.
-- `requires_json`: what an engine must offer to execute the run (labels, GPUs).
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN requires_json TEXT;
CREATE INDEX runs_lease_owner ON runs (lease_owner);

CREATE TABLE engines (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    host            TEXT NOT NULL,
    boot_id         TEXT NOT NULL,
    pid             BIGINT NOT NULL,
    pid_start       BIGINT NOT NULL,
    labels_json     TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    seen_ms         BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    stopped_at      TEXT,
    stop_reason     TEXT
);
CREATE INDEX engines_host ON engines (host, stopped_at);
