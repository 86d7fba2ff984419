-- Spend caps (SPEC §13): one per key or principal and period (a UTC calendar day or month, or
-- all time). No foreign key on subject_id: it names a key or a principal, as subject_kind says;
-- the stores check it exists when a budget is set.
CREATE TABLE budgets (
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('key', 'principal')),
    subject_id    TEXT NOT NULL,
    period        TEXT NOT NULL CHECK (period IN ('day', 'month', 'total')),
    limit_amount  ${decimal} NOT NULL,
    PRIMARY KEY (subject_kind, subject_id, period)
);

-- Per-key rate limits (SPEC §13); a NULL limit is off.
CREATE TABLE rate_limits (
    key_id                   TEXT PRIMARY KEY REFERENCES api_keys (id),
    requests_per_minute      INTEGER CHECK (requests_per_minute > 0),
    input_tokens_per_minute  INTEGER CHECK (input_tokens_per_minute > 0)
);

-- Why the deepest breakpoint did not read (SPEC §14); NULL when it read or caching was off.
ALTER TABLE ledger ADD COLUMN miss_reason TEXT;
