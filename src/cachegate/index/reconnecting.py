"""An index that is no start-up dependency: opened in the background, with backoff, until it answers.

A cache's backend being down must never keep the gateway from starting (SPEC §11). ``ReconnectingIndex``
wraps the opening of a real index: ``open()`` tries once; if the backend cannot be reached, the
gateway starts anyway, every operation raises ``IndexUnavailable`` at once (callers degrade, the
request is served uncached) and one background task tries again after 0.25 s, 0.5 s, 1 s, … up to
``max_backoff`` seconds between attempts, until an attempt succeeds. From then on every call goes
straight to the real index. Requests never wait for a connection attempt, and while the index is
missing nothing but that one task touches the network: no busy loop, no stampede of reconnects.

Once open, losing the backend again is the real index's business: the PostgreSQL pool reconnects on
the next acquire, SQLite reopens nothing (its errors are per statement). Either way each failing
operation is an ``IndexUnavailable`` and the request degrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from cachegate.core.types import IndexEntry, IndexMatch, Refresh, Scope
from cachegate.index.base import CacheIndex, IndexUnavailable

log = logging.getLogger(__name__)

Opener = Callable[[], Awaitable[CacheIndex]]


class ReconnectingIndex:
    """A ``CacheIndex`` over whatever ``opener`` returns, once it has returned."""

    def __init__(self, opener: Opener, *, min_backoff: float = 0.25, max_backoff: float = 5.0) -> None:
        """Use ``await ReconnectingIndex.open(opener)``; a bare instance opens on its first use."""
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("backoffs must satisfy 0 < min_backoff <= max_backoff")
        self._opener = opener
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._inner: CacheIndex | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: str | None = None
        """Why the index is not open yet (None once open): for logs and ``/readyz``."""

    @classmethod
    async def open(cls, opener: Opener, **options: float) -> ReconnectingIndex:
        """Try ``opener`` once now; on ``IndexUnavailable`` keep trying in the background.

        Any other exception (an unknown URL scheme, a bad option) is a configuration error and is
        raised: retrying would not help.
        """
        index = cls(opener, **options)
        try:
            index._inner = await opener()
        except IndexUnavailable as exc:
            index._unavailable(exc)
            index._start_reconnecting()
        return index

    @property
    def connected(self) -> bool:
        return self._inner is not None

    async def lookup(self, scope: Scope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        return await self._index().lookup(scope, hashes, now)

    async def write(self, entries: Sequence[IndexEntry], now: float) -> None:
        await self._index().write(entries, now)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        await self._index().refresh(refreshes, now)

    async def sweep(self, now: float) -> int:
        return await self._index().sweep(now)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.aclose()

    def _index(self) -> CacheIndex:
        if self._inner is not None:
            return self._inner
        if self._closed:
            raise IndexUnavailable("the cache index is closed")
        self._start_reconnecting()
        raise IndexUnavailable(f"the cache index is not connected yet ({self.last_error})")

    def _start_reconnecting(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconnect(), name="cachegate-index-reconnect")

    async def _reconnect(self) -> None:
        delay = self._min_backoff
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                inner = await self._opener()
            except IndexUnavailable as exc:
                self._unavailable(exc)
                delay = min(delay * 2, self._max_backoff)
                continue
            except Exception:
                # Not a reachability problem; log it, but keep trying: a cache must not stop the gateway.
                log.exception("opening the cache index failed unexpectedly; retrying in %.1f s", self._max_backoff)
                delay = self._max_backoff
                continue
            if self._closed:  # closed while the attempt was in flight
                await inner.aclose()
                return
            self._inner, self.last_error = inner, None
            log.info("cache index connected: caching resumes")
            return

    def _unavailable(self, exc: IndexUnavailable) -> None:
        if self.last_error is None:
            log.warning("cache index unavailable, serving uncached and retrying in the background: %s", exc)
        self.last_error = str(exc)
