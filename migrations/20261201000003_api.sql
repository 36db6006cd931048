-- HTTP API: bearer tokens, model publication and promotion.

CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,       -- public part of the token
    name            TEXT NOT NULL UNIQUE,   -- recorded as created_by on runs and models
    secret_hash     TEXT NOT NULL,          -- Argon2id PHC string of the secret part
    claims_json     TEXT NOT NULL,          -- claims granted directly
    roles_json      TEXT NOT NULL,          -- roles granted (expanded through configs/roles.yaml)
    created_at      TEXT NOT NULL,
    revoked_at      TEXT
);

ALTER TABLE models ADD COLUMN published_at TEXT;
ALTER TABLE models ADD COLUMN stage TEXT NOT NULL DEFAULT 'development';  -- development | testing | production
ALTER TABLE models ADD COLUMN production_at TEXT;
