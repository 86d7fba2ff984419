-- Running totals of what each key has been billed (the ledger's cost) per UTC day, per UTC month and
-- in all time, kept in the transaction that writes the ledger rows (only rows actually inserted:
-- a replayed duplicate adds nothing). Budgets (SPEC §13) read these few rows per key every few
-- seconds instead of summing the ledger. label is the window: '2026-12-02', '2026-12', or ''.
CREATE TABLE spend (
    key_id        TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    period        TEXT NOT NULL CHECK (period IN ('day', 'month', 'total')),
    label         TEXT NOT NULL,
    amount        ${decimal} NOT NULL,
    PRIMARY KEY (key_id, period, label)
);

CREATE INDEX spend_window ON spend (period, label);

-- The rows billed before this step, once.
INSERT INTO spend (key_id, principal_id, period, label, amount)
SELECT key_id, min(principal_id), 'day', ${utc_day}, ${decimal_sum}(cost)
FROM ledger WHERE cost IS NOT NULL GROUP BY key_id, ${utc_day};

INSERT INTO spend (key_id, principal_id, period, label, amount)
SELECT key_id, min(principal_id), 'month', ${utc_month}, ${decimal_sum}(cost)
FROM ledger WHERE cost IS NOT NULL GROUP BY key_id, ${utc_month};

INSERT INTO spend (key_id, principal_id, period, label, amount)
SELECT key_id, min(principal_id), 'total', '', ${decimal_sum}(cost)
FROM ledger WHERE cost IS NOT NULL GROUP BY key_id;
