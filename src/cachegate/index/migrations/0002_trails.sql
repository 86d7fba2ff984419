-- The trails of committed requests, for the diagnosis of misses (SPEC §14).

CREATE TABLE cache_index_trails (
    principal         TEXT     NOT NULL,
    model             TEXT     NOT NULL,
    tokenizer_version TEXT     NOT NULL,
    key               ${bytes} NOT NULL,
    anchor            ${bytes} NOT NULL,
    sections          ${bytes} NOT NULL,
    expires_at        ${float} NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, key)
) ${without_rowid};

CREATE INDEX cache_index_trails_expires_at ON cache_index_trails (expires_at);
