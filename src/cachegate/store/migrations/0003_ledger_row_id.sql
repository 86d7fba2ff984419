-- Each ledger row's id, given by the gateway when the request ends, so a row sent twice (the local
-- journal replayed after a crash) is stored once: inserts meeting an existing id are skipped.
-- Rows from before this step have none; NULLs never conflict with each other.
ALTER TABLE ledger ADD COLUMN row_id TEXT;

CREATE UNIQUE INDEX ledger_row_id ON ledger (row_id);
