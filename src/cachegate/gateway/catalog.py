"""The in-memory catalog (endpoints, models, tariffs), reloaded from the control store periodically.

Routing and pricing never wait on the store: a failed reload keeps the last good catalog
(SPEC §11, "control store down").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cachegate.store.base import Catalog, ControlStore, StoreError

log = logging.getLogger(__name__)


class CatalogCache:
    def __init__(self, store: ControlStore, refresh_seconds: float) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._task: asyncio.Task[None] | None = None
        self.current = Catalog(endpoints={}, models={}, tariffs={})

    async def load(self) -> None:
        self.current = await self._store.load_catalog()

    def start(self) -> None:
        self._task = asyncio.create_task(self._reload_forever(), name="cachegate-catalog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.load()
            except StoreError as exc:
                log.warning("catalog reload failed, keeping the last one: %s", exc)
