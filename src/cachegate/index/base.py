"""The cache index port (SPEC §7): which prefixes a scope has written, and until when.

A cache is a cache, not a ledger: an adapter that loses entries only costs discounts, but one
that returns an expired entry or another scope's entry would misbill, so those two rules are
what every backend must get right (tests/index/ runs one suite against all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cachegate.core.errors import CachegateError
from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail


class CacheIndexError(CachegateError):
    """Base of the index errors."""


class IndexUnavailable(CacheIndexError):
    """The backend could not be reached or answered with an error; callers degrade (§11)."""


@runtime_checkable
class CacheIndex(Protocol):
    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        """Live entries (``expires_at > now``) of ``scope`` whose hash is in ``hashes``."""

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        """Upsert entries; a live entry's expiry is never shortened by a write. Store ``trails``
        beside them (SPEC §14), each replacing the one under its key, its expiry never shortened."""

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        """Slide live entries' expiry forward (never backwards); expired entries stay gone."""

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        """What ``scope`` still holds beyond its live entries, in one round trip: which of ``hashes``
        have an expired entry (``expires_at <= now``, not swept yet), and the trails under ``keys``."""

    async def sweep(self, now: float) -> int:
        """Delete the entries and trails whose ``expires_at <= now``; returns how many were removed.
        (The sweeper passes its clock minus the retention: expired entries are kept that long.)"""

    async def aclose(self) -> None: ...
