"""Background deletion of expired index entries.

Expired entries are already invisible (every read checks ``expires_at > now``); sweeping only keeps
the table from growing without bound. So a failed sweep is logged and tried again next time, and
nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cachegate.index.base import CacheIndex, IndexUnavailable

logger = logging.getLogger(__name__)


class Sweeper:
    """Calls ``index.sweep(clock())`` every ``interval`` seconds, from ``start()`` until ``stop()``."""

    def __init__(self, index: CacheIndex, interval: float = 60.0, *, clock: Callable[[], float] = time.time) -> None:
        if interval <= 0:
            raise ValueError(f"the sweep interval must be positive, not {interval!r}")
        self._index = index
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start sweeping on the running event loop; the first sweep comes one interval later."""
        if self._task is not None:
            raise RuntimeError("the sweeper has been started already")
        self._task = asyncio.create_task(self._run(), name="cachegate-index-sweeper")

    async def stop(self) -> None:
        """Stop sweeping and wait until the task has ended (a sweep in flight is cancelled)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def sweep_once(self) -> None:
        """One sweep; any failure is logged, never raised."""
        try:
            removed = await self._index.sweep(self._clock())
        except IndexUnavailable as exc:
            logger.warning("cache index sweep failed: %s", exc)
        except Exception:
            logger.exception("cache index sweep failed unexpectedly")
        else:
            logger.debug("cache index sweep removed %d expired entries", removed)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sweep_once()
