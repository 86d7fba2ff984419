"""The cache index port (SPEC §7): which prefixes a scope has written, and until when.

A cache is a cache, not a ledger: an adapter that loses entries only costs discounts, but one
that returns an expired entry or another scope's entry would misbill, so those two rules are
what every backend must get right (tests/index/ runs one suite against all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cachegate.core.errors import CachegateError
from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Refresh


class CacheIndexError(CachegateError):
    """Base of the index errors."""


class IndexUnavailable(CacheIndexError):
    """The backend could not be reached or answered with an error; callers degrade (§11)."""


@runtime_checkable
class CacheIndex(Protocol):
    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        """Live entries (``expires_at > now``) of ``scope`` whose hash is in ``hashes``."""

    async def write(self, entries: Sequence[IndexEntry], now: float) -> None:
        """Upsert entries; a live entry's expiry is never shortened by a write."""

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        """Slide live entries' expiry forward (never backwards); expired entries stay gone."""

    async def sweep(self, now: float) -> int:
        """Delete expired entries; returns how many were removed."""

    async def aclose(self) -> None: ...
