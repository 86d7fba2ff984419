"""Cache index adapters (SPEC §7) behind the ``CacheIndex`` port of ``index/base.py``.

Every backend keeps the same rules, and ``tests/index`` runs one suite against all of them:

- **Scope.** An entry's key is ``(principal, model alias, tokenizer_version, prefix_hash)``; no
  operation ever reads, refreshes or replaces an entry of another scope.
- **Time.** The caller passes ``now`` (float Unix seconds) to every operation; backends never read a
  clock of their own, so replicas sharing a database agree with their own request times and tests are
  deterministic. An entry is live while ``expires_at > now``; at ``expires_at == now`` it has expired.
  (``write`` needs no ``now``: the rule below gives the same answer whatever the time.)
- **lookup** returns only live entries of exactly that scope, at most one per hash, in no set order.
- **write** is an upsert that never shortens a live entry's life: the later of the stored and the
  new expiry wins, and the ``ttl`` that produced it goes with it (so a refresh on a later hit slides
  by the TTL actually in force); on a tie the new ``ttl`` is taken. An expired entry is therefore
  simply replaced by any live write, with no liveness check needed. ``cumulative_tokens`` always
  takes the new value: it is a property of the prefix within a tokenizer_version, so the newest
  measurement is the one to bill reads with.
- **refresh** moves a live entry's expiry forward only; it never shortens one and never revives an
  expired one (a stale refresh must not resurrect a prefix the upstream has evicted long ago).
- **Batches** apply in order, as if each item were written one after the other (so duplicates in one
  batch are fine), in one round trip and one transaction per call (Redis: one atomic script per
  scope of the batch, the scopes' scripts sent together).
- **sweep** deletes expired entries (``expires_at <= now``) and returns how many it removed.
- **Errors.** Anything a backend's I/O raises comes out as ``IndexUnavailable``; callers degrade.

Modules: ``memory`` (in process), ``sqlite`` (embedded default), ``postgres`` and ``redis`` (shared by
replicas; ``redis`` also on a Redis Cluster), ``sweeper`` (background deletion of expired rows) and
``factory`` (``open_index(url)``). This package
itself imports nothing: the pure core imports ``index.base``, and that must not load database drivers.
"""
