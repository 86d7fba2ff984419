-- Automatic caching per model (SPEC §3.1): the TTL a request without any marker is cached with,
-- as if it carried a top-level cache_control; NULL keeps such requests uncached.
ALTER TABLE models ADD COLUMN automatic_cache_ttl TEXT;
