"""The in-memory catalog (endpoints, models, tariffs), reloaded from the control store periodically.

Routing and pricing never wait on the store: a failed reload keeps the last good catalog
(SPEC §11, "control store down").
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cachegate.asgi import Refusal
from cachegate.gateway.periodic import Periodic
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
        self.loaded = False
        """Whether a catalog has been loaded from the store yet (``/readyz``)."""

    def route(self, alias: str) -> tuple[Model, Endpoint]:
        """The model a client named and the endpoint serving it; 404 ``model_not_found`` otherwise."""
        model = self.current.models.get(alias)
        endpoint = self.current.endpoints.get(model.endpoint) if model is not None else None
        if model is None or endpoint is None:
            raise Refusal(404, f"The model '{alias}' does not exist", "model_not_found", "model")
        return model, endpoint

    async def load(self) -> None:
        self.current = await self._store.load_catalog()
        self.loaded = True
        if self._on_revocations is not None:
            self._on_revocations(self.current.revocations)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _reload(self) -> None:
        try:
            await self.load()
        except StoreError as exc:
            log.warning("catalog reload failed, keeping the last one: %s", exc)
