-- The route that served a request (chat, messages: SPEC §9), so usage can be told apart by dialect.
ALTER TABLE ledger ADD COLUMN route TEXT NOT NULL DEFAULT 'chat';
