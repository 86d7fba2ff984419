-- The cache index: which prefixes are cached, until when (SPEC §7). Expiry times are the API's
-- float Unix seconds, stored exactly (a timestamp type would round them to microseconds).
-- The dollar-brace slots are the differences between SQLite and PostgreSQL (cachegate/sql/dialect.py).

CREATE TABLE cache_index_entries (
    principal         TEXT      NOT NULL,
    model             TEXT      NOT NULL,
    tokenizer_version TEXT      NOT NULL,
    prefix_hash       ${bytes}  NOT NULL,
    cumulative_tokens ${bigint} NOT NULL CHECK (cumulative_tokens >= 0),
    ttl               TEXT      NOT NULL CHECK (ttl IN ('5m', '1h', '24h')),
    expires_at        ${float}  NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, prefix_hash)
) ${without_rowid};

CREATE INDEX cache_index_entries_expires_at ON cache_index_entries (expires_at);
