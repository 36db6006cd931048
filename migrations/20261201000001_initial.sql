-- Kiln's durable state. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Timestamps are UTC RFC 3339 text with milliseconds (sortable as text); JSON is text.

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,           -- uuid v7 (time-ordered)
    workflow_name   TEXT NOT NULL,
    workflow_file   TEXT,
    workflow_yaml   TEXT NOT NULL,              -- the definition as it ran
    status          TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled
    params_json     TEXT NOT NULL,              -- resolved params (hyperparameters)
    error_message   TEXT,
    metrics_json    TEXT,
    created_by      TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    duration_ms     BIGINT,
    heartbeat_at    TEXT
);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_created ON runs (created_at);

CREATE TABLE steps (
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id         TEXT NOT NULL,
    position        BIGINT  NOT NULL,           -- order in the workflow file
    uses            TEXT NOT NULL,
    action          TEXT,
    status          TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled | skipped
    attempt         BIGINT  NOT NULL DEFAULT 0,
    inputs_json     TEXT,
    outputs_json    TEXT,
    progress_json   TEXT,
    error_message   TEXT,
    plugin_name     TEXT,
    plugin_version  TEXT,
    plugin_digest   TEXT,
    log_path        TEXT,
    started_at      TEXT,
    finished_at     TEXT,
    duration_ms     BIGINT,
    PRIMARY KEY (run_id, step_id)
);

-- Structured log lines of the engine and plugins (the programs' raw output stays in log files).
CREATE TABLE events (
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    step_id         TEXT,
    at              TEXT NOT NULL,
    level           TEXT NOT NULL,
    message         TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE checkpoints (
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id         TEXT NOT NULL,
    path            TEXT NOT NULL,
    epoch           BIGINT,
    is_best         BIGINT  NOT NULL DEFAULT 0,
    reported_at     TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, path)
);

CREATE TABLE models (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    project         TEXT NOT NULL,
    version         BIGINT  NOT NULL,           -- 1, 2, ... within (project, name)
    task            TEXT,
    format          TEXT,
    file_path       TEXT NOT NULL,              -- relative to the workspace
    config_path     TEXT,                       -- relative to the workspace
    input_size      BIGINT,
    class_names_json TEXT,
    metrics_json    TEXT,
    dataset         TEXT,
    training_run_id TEXT,
    training_step_id TEXT,
    base_model      TEXT,                       -- lineage: the model or weights it started from
    is_published    BIGINT  NOT NULL DEFAULT 0,
    created_by      TEXT NOT NULL,
    created_on      TEXT NOT NULL,
    UNIQUE (project, name, version),
    UNIQUE (training_run_id, training_step_id)  -- registration is idempotent per step
);
CREATE INDEX models_by_project ON models (project, name);
