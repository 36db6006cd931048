-- Several engines on one database. An engine is a process that executes runs (`kiln serve`,
-- `kiln run`, `kiln resume`...); it registers here and keeps `seen_ms` fresh. A run is executed
-- by the engine that holds its lease: `lease_owner` (an engine id) until `lease_expires_ms`
-- (the database's clock, milliseconds since the Unix epoch), renewed by the owner's heartbeat.
-- Each acquisition increments `lease_epoch`, the fencing token every write of the run's state
-- checks. `requires_json`: what an engine must have to execute the run (labels, GPUs).
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_expires_ms BIGINT;
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
    stopped_at      TEXT,
    stop_reason     TEXT
);
CREATE INDEX engines_host ON engines (host, stopped_at);
