-- How a request whose client left before the end was billed (SPEC §11): 'drained' (the upstream's
-- final usage, read after the client left) or 'counted' (cachegate's count of the prompt and of the
-- completion tokens relayed); NULL when the client received the whole answer.
ALTER TABLE ledger ADD COLUMN disconnect TEXT;
