-- Durability: cancel requests, failure kinds, retry budgets, GPU leases, memoized outputs.

ALTER TABLE runs ADD COLUMN cancel_requested_at TEXT;

ALTER TABLE steps ADD COLUMN failure_kind TEXT;          -- failure | infrastructure
ALTER TABLE steps ADD COLUMN failure_retries BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN infrastructure_retries BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN retry_reason TEXT;          -- why the current attempt retries: failure | infrastructure
ALTER TABLE steps ADD COLUMN retry_error TEXT;           -- the previous attempt's error
ALTER TABLE steps ADD COLUMN gpus TEXT;                  -- leased devices, e.g. "0,1"
ALTER TABLE steps ADD COLUMN cached_from TEXT;           -- "<run>/<step>" whose outputs were reused

-- Outputs of steps that opted into memoization (`cache: true`), by input key.
CREATE TABLE step_cache (
    cache_key       TEXT PRIMARY KEY,   -- sha256 of plugin digest, action, inputs, input file digests
    outputs_json    TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    step_id         TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
