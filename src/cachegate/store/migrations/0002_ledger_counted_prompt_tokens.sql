-- Our own count of the whole prompt, when the request's prompt was rendered and counted, beside
-- the upstream's prompt_tokens: their difference is the drift an operator reconciles (SPEC §6.6).
ALTER TABLE ledger ADD COLUMN counted_prompt_tokens INTEGER;
