"""The in-memory catalog (endpoints, models, tariffs), reloaded from the control store periodically.

Routing and pricing never wait on the store: a failed reload keeps the last good catalog
(SPEC §11, "control store down").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cachegate.asgi import Refusal
from cachegate.background import Periodic, backoff_delays
from cachegate.store.base import Catalog, ControlStore, Endpoint, Model, StoreError

log = logging.getLogger(__name__)


class CatalogCache:
    def __init__(
        self, store: ControlStore, refresh_seconds: float, on_revocations: Callable[[int], None] | None = None
    ) -> None:
        self._store = store
        self._on_revocations = on_revocations
        self._periodic = Periodic("catalog reload", refresh_seconds, self._reload)
        self.current = Catalog(endpoints={}, models={}, tariffs={})
        self._first_load: asyncio.Task[None] | None = None
        self.loaded = False
        """Whether a catalog has been loaded from the store yet (``/readyz``)."""

    def route(self, alias: str) -> tuple[Model, list[Endpoint]]:
        """The model a client named and the endpoints serving it, in the model's order (at least
        one); 404 ``model_not_found`` otherwise."""
        catalog = self.current
        model = catalog.models.get(alias)
        if model is None:
            raise Refusal(404, f"The model '{alias}' does not exist", "model_not_found", "model")
        if not model.more_endpoints:  # the usual case, kept short
            endpoint = catalog.endpoints.get(model.endpoint)
            endpoints = [endpoint] if endpoint is not None else []
        else:
            endpoints = [catalog.endpoints[name] for name in model.endpoints if name in catalog.endpoints]
        if not endpoints:
            raise Refusal(404, f"The model '{alias}' does not exist", "model_not_found", "model")
        return model, endpoints

    async def load(self) -> None:
        self.current = await self._store.load_catalog()
        self.loaded = True
        if self._on_revocations is not None:
            self._on_revocations(self.current.revocations)

    async def start(self) -> None:
        """Load now if the store answers, else keep trying in the background with backoff; then
        reload periodically.

        Until the first load the gateway answers 503 and is not ready: the store may be down at
        start, which must not stop the process (SPEC §11).
        """
        if not self.loaded:
            try:
                await self.load()
            except Exception as exc:  # a store down, or a row it cannot decode: either way, retried
                log.warning("no catalog yet, answering 503 until the control store is reached: %s", exc)
                self._first_load = asyncio.create_task(self._load_until_loaded(), name="cachegate-catalog-first-load")
                return
        self._periodic.start()

    async def stop(self) -> None:
        if self._first_load is not None:
            self._first_load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._first_load
            self._first_load = None
        await self._periodic.stop()

    async def _load_until_loaded(self) -> None:
        for delay in backoff_delays(0.25, 5.0):
            await asyncio.sleep(delay)
            try:
                await self.load()
            except StoreError:
                continue
            except Exception:
                log.exception("loading the catalog failed unexpectedly; retrying")
                continue
            log.info("catalog loaded from the control store: serving")
            self._periodic.start()
            return

    async def _reload(self) -> None:
        try:
            await self.load()
        except StoreError as exc:
            log.warning("catalog reload failed, keeping the last one: %s", exc)
