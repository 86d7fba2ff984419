"""What the admin routes work with, and what they do after a change."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from cachegate.config import Config
from cachegate.gateway.auth import KeyResolver
from cachegate.gateway.catalog import CatalogCache
from cachegate.store.base import ControlStore, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AdminContext:
    store: ControlStore
    config: Config
    keys: KeyResolver  # the gateway's own: a key revoked here stops working here at once
    catalog: CatalogCache  # the gateway's own: reloaded after every change made here

    async def changed(self) -> None:
        """Reload this process's catalog now, so what was just written serves here at once; every
        other replica reloads its own within ``catalog_refresh_seconds``. A reload that fails
        leaves the change to the next periodic one."""
        try:
            await self.catalog.load()
        except StoreError as exc:
            log.warning("catalog reload after an admin change failed; the periodic reload will retry: %s", exc)


def admin_context(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.admin
    return context


Context = Annotated[AdminContext, Depends(admin_context)]
