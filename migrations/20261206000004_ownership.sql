-- Who owns what on disk (see ARCHITECTURE.md, "Ownership of files").
--
-- A training folder, projects/<project>/model/training/<name>/, belongs to the run that claimed
-- it first, until that run is deleted: no second run writes into it or deletes it.
CREATE TABLE trainings (
    project         TEXT NOT NULL,
    name            TEXT NOT NULL,
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    claimed_at      TEXT NOT NULL,
    PRIMARY KEY (project, name)
);
CREATE INDEX trainings_by_run ON trainings (run_id);

-- An extracted dataset, projects/<project>/training_data/<slug>/, is shared: every run that
-- used it is recorded, with the release it held (its SHA-256). It is replaced or purged only
-- when no other run uses it.
CREATE TABLE dataset_uses (
    project         TEXT NOT NULL,
    slug            TEXT NOT NULL,
    run_id          TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    release_sha256  TEXT NOT NULL,
    used_at         TEXT NOT NULL,
    PRIMARY KEY (project, slug, run_id)
);
CREATE INDEX dataset_uses_by_run ON dataset_uses (run_id);
