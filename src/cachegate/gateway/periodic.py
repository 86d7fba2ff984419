"""A background round of work every few seconds: the ledger flush, cache refreshes, catalog reloads.

A round that fails is logged and the next one goes on: a task that died on one unexpected
error would silently stop billing, refreshing or reloading for the life of the process.
Stopping lets a round in progress finish instead of cancelling it halfway, because a ledger
write cut off mid-flight could be lost, or land and then be written again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        self._name = name
        self._interval = interval
        self._work = work
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"cachegate-{self._name}")

    async def stop(self) -> None:
        """Ask the loop to end and wait for the round in progress, if any, to finish."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
                return
            except TimeoutError:
                pass
            try:
                await self._work()
            except Exception:
                log.exception("%s failed; the next round runs in %s s", self._name, self._interval)
