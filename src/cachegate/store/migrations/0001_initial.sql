-- The control store: who may call, where requests go, what they cost, and what was billed.
-- The dollar-brace placeholders are the only differences between SQLite and PostgreSQL
-- (cachegate/sql/dialect.py fills them in). Decimals are TEXT in SQLite and NUMERIC in
-- PostgreSQL, never floating point.

CREATE TABLE principals (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  ${timestamp} NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    principal_id  TEXT NOT NULL REFERENCES principals (id),
    secret_hash   ${bytes} NOT NULL UNIQUE,
    is_admin      BOOLEAN NOT NULL,
    created_at    ${timestamp} NOT NULL,
    revoked_at    ${timestamp}
);

CREATE INDEX api_keys_principal ON api_keys (principal_id);

CREATE TABLE endpoints (
    name      TEXT PRIMARY KEY,
    base_url  TEXT NOT NULL,
    api_key   TEXT
);

CREATE TABLE models (
    alias           TEXT PRIMARY KEY,
    endpoint        TEXT NOT NULL REFERENCES endpoints (name),
    upstream_model  TEXT NOT NULL,
    tokenizer       TEXT NOT NULL,
    input_price     ${decimal} NOT NULL,
    output_price    ${decimal} NOT NULL
);

-- Versioned: a version is in force from valid_from until valid_until (open when NULL).
CREATE TABLE cache_tariffs (
    id                    ${identity},
    model                 TEXT NOT NULL REFERENCES models (alias),
    write_multiplier_5m   ${decimal} NOT NULL,
    write_multiplier_1h   ${decimal} NOT NULL,
    write_multiplier_24h  ${decimal} NOT NULL,
    read_multiplier       ${decimal} NOT NULL,
    min_prefix_tokens     INTEGER NOT NULL CHECK (min_prefix_tokens >= 0),
    valid_from            ${timestamp} NOT NULL,
    valid_until           ${timestamp},
    CHECK (valid_until IS NULL OR valid_until >= valid_from)
);

-- At most one open version per model, whatever concurrent writers do.
CREATE UNIQUE INDEX cache_tariffs_one_open ON cache_tariffs (model) WHERE valid_until IS NULL;

CREATE INDEX cache_tariffs_model ON cache_tariffs (model, valid_from);

-- One row per request, as billed. No foreign keys: the ledger is history and must accept
-- every row the gateway buffered, whatever has changed in the catalog since.
CREATE TABLE ledger (
    id                         ${identity},
    at                         ${timestamp} NOT NULL,
    principal_id               TEXT NOT NULL,
    key_id                     TEXT NOT NULL,
    model                      TEXT NOT NULL,
    status                     INTEGER NOT NULL,
    streaming                  BOOLEAN NOT NULL,
    prompt_tokens              INTEGER NOT NULL,
    completion_tokens          INTEGER NOT NULL,
    cache_read_tokens          INTEGER NOT NULL,
    cache_creation_5m_tokens   INTEGER NOT NULL,
    cache_creation_1h_tokens   INTEGER NOT NULL,
    cache_creation_24h_tokens  INTEGER NOT NULL,
    upstream_cached_tokens     INTEGER,
    cost                       ${decimal},
    list_cost                  ${decimal},
    latency_ms                 DOUBLE PRECISION NOT NULL,
    degraded                   BOOLEAN NOT NULL
);

CREATE INDEX ledger_at ON ledger (at);

CREATE INDEX ledger_principal_at ON ledger (principal_id, at);
