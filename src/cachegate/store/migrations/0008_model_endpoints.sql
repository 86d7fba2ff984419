-- Several endpoints (replicas) per model (SPEC §15). models.endpoint stays the first; this table
-- lists the others, in order from position 1, so every model written before this step (one
-- endpoint) is unchanged and has no rows here.
CREATE TABLE model_endpoints (
    model     TEXT NOT NULL REFERENCES models (alias),
    endpoint  TEXT NOT NULL REFERENCES endpoints (name),
    position  INTEGER NOT NULL CHECK (position >= 1),
    PRIMARY KEY (model, position),
    UNIQUE (model, endpoint)
);
