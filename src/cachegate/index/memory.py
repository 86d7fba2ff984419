"""The in-process cache index: plain dicts, for tests and single-process deployments.

It states the shared rules (see the package docstring) in their plainest form, which is why the
SQL backends' property test compares them against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail


class MemoryIndex:
    """A ``CacheIndex`` held in this process; lost on restart, shared with no one.

    Every method runs without awaiting anything, so on one event loop each call is atomic.
    """

    def __init__(self) -> None:
        self._scopes: dict[CacheScope, dict[bytes, IndexMatch]] = {}
        self._trails: dict[tuple[CacheScope, bytes], Trail] = {}

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        entries = self._scopes.get(scope)
        if not entries:
            return []
        candidates = (entries.get(prefix_hash) for prefix_hash in dict.fromkeys(hashes))
        return [match for match in candidates if match is not None and match.expires_at > now]

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        for trail in trails:
            stored_trail = self._trails.get((trail.scope, trail.key))
            if stored_trail is not None and stored_trail.expires_at > trail.expires_at:
                trail = replace(trail, expires_at=stored_trail.expires_at)
            self._trails[(trail.scope, trail.key)] = trail
        for entry in entries:
            scoped = self._scopes.setdefault(entry.scope, {})
            stored = scoped.get(entry.prefix_hash)
            if stored is not None and stored.expires_at > entry.expires_at:
                scoped[entry.prefix_hash] = replace(stored, cumulative_tokens=entry.cumulative_tokens)
            else:
                scoped[entry.prefix_hash] = IndexMatch(
                    prefix_hash=entry.prefix_hash,
                    cumulative_tokens=entry.cumulative_tokens,
                    ttl=entry.ttl,
                    expires_at=entry.expires_at,
                )

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        for refresh in refreshes:
            scoped = self._scopes.get(refresh.scope, {})
            stored = scoped.get(refresh.prefix_hash)
            if stored is not None and now < stored.expires_at < refresh.expires_at:
                scoped[refresh.prefix_hash] = replace(stored, expires_at=refresh.expires_at)

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        entries = self._scopes.get(scope, {})
        expired = frozenset(
            prefix_hash
            for prefix_hash in hashes
            if (match := entries.get(prefix_hash)) is not None and match.expires_at <= now
        )
        found = (self._trails.get((scope, key)) for key in dict.fromkeys(keys))
        return Recall(expired, tuple(trail for trail in found if trail is not None))

    async def sweep(self, now: float) -> int:
        removed = 0
        for key, trail in list(self._trails.items()):
            if trail.expires_at <= now:
                del self._trails[key]
                removed += 1
        for scope, scoped in list(self._scopes.items()):
            expired = [prefix_hash for prefix_hash, match in scoped.items() if match.expires_at <= now]
            for prefix_hash in expired:
                del scoped[prefix_hash]
            removed += len(expired)
            if not scoped:
                del self._scopes[scope]
        return removed

    async def aclose(self) -> None:
        self._scopes.clear()
        self._trails.clear()
