"""An index that is no start-up dependency: opened in the background, with backoff, until it answers.

While the backend cannot be reached, every operation raises ``IndexUnavailable`` at once and the
request is served uncached with the degraded flag (SPEC §11); the retrying is
``cachegate.background.Reconnecting``. Once open, every call goes straight to the real index.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from cachegate.background import Reconnecting
from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail
from cachegate.index.base import CacheIndex, IndexUnavailable

Opener = Callable[[], Awaitable[CacheIndex]]


class ReconnectingIndex:
    """A ``CacheIndex`` over whatever ``opener`` returns, once it has returned."""

    def __init__(self, opener: Opener, *, min_backoff: float = 0.25, max_backoff: float = 5.0) -> None:
        """Use ``await ReconnectingIndex.open(opener)``; a bare instance opens on its first use."""
        self._backend = Reconnecting(
            "cache index",
            opener,
            IndexUnavailable,
            while_down="serving uncached",
            resumes="caching",
            min_backoff=min_backoff,
            max_backoff=max_backoff,
        )

    @classmethod
    async def open(cls, opener: Opener, **options: float) -> ReconnectingIndex:
        """Try ``opener`` once now; on ``IndexUnavailable`` keep trying in the background (any other
        exception is a configuration error and is raised)."""
        index = cls(opener, **options)
        await index._backend.open()
        return index

    @property
    def connected(self) -> bool:
        return self._backend.connected

    @property
    def last_error(self) -> str | None:
        return self._backend.last_error

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        return await self._backend.get().lookup(scope, hashes, now)

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        await self._backend.get().write(entries, now, trails)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        await self._backend.get().refresh(refreshes, now)

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        return await self._backend.get().recall(scope, hashes, keys, now)

    async def sweep(self, now: float) -> int:
        return await self._backend.get().sweep(now)

    async def aclose(self) -> None:
        await self._backend.aclose()
