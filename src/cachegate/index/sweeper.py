"""Background deletion of expired index entries.

Expired entries are already invisible (every read checks ``expires_at > now``); sweeping only keeps
the table from growing without bound. They are kept for a retention window past their expiry, so a
miss can still be told ``expired`` (SPEC §14). So a failed sweep is logged and tried again next time, and
nothing waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cachegate.background import Periodic
from cachegate.index.base import CacheIndex, IndexUnavailable

logger = logging.getLogger(__name__)


class Sweeper:
    """Calls ``index.sweep(clock() - retention)`` every ``interval`` seconds, from ``start()`` until ``stop()``.

    ``retention``: expired entries and trails are kept that long, so that a miss can be diagnosed
    as ``expired`` (SPEC §14).
    """

    def __init__(
        self,
        index: CacheIndex,
        interval: float = 60.0,
        *,
        retention: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self._retention = retention
        self._clock = clock
        self._periodic = Periodic("index sweep", interval, self.sweep_once)

    @property
    def running(self) -> bool:
        return self._periodic.running

    def start(self) -> None:
        """Start sweeping on the running event loop; the first sweep comes one interval later."""
        self._periodic.start()

    async def stop(self) -> None:
        """Stop sweeping, once a sweep in flight (if any) has finished."""
        await self._periodic.stop()

    async def sweep_once(self) -> None:
        """One sweep; any failure is logged, never raised."""
        try:
            removed = await self._index.sweep(self._clock() - self._retention)
        except IndexUnavailable as exc:
            logger.warning("cache index sweep failed: %s", exc)
        except Exception:
            logger.exception("cache index sweep failed unexpectedly")
        else:
            logger.debug("cache index sweep removed %d expired entries", removed)
