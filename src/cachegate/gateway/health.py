"""Health for orchestrators: ``/healthz`` (the process answers) and ``/readyz`` (it may take traffic).

Ready means the catalog (keys are resolved per request; endpoints, models, tariffs) has been loaded
from the control store at least once: before that every /v1 request would be refused. A cache
backend that is down does not make the gateway unready — requests are served uncached (SPEC §11) —
but the reasons are listed in the body, for operators::

    {"status": "ready", "catalog": "loaded", "cache_degraded": ["cache index: ..."]}
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from cachegate.asgi import JSON_HEADERS, Send, send_bytes
from cachegate.gateway.catalog import CatalogCache
from cachegate.index.base import CacheIndex
from cachegate.tokens.base import TokenCounter, TokenCountError


async def send_alive(send: Send) -> None:
    await send_bytes(send, 200, JSON_HEADERS, b'{"status":"ok"}')


class Readiness:
    def __init__(self, catalog: CatalogCache, index: CacheIndex, counters: Mapping[str, TokenCounter]) -> None:
        self._catalog = catalog
        self._index = index
        self._counters = counters

    def degraded_reasons(self) -> list[str]:
        """Why some requests are served uncached right now (empty when none is)."""
        reasons = []
        if not getattr(self._index, "connected", True):
            reasons.append(f"cache index: {getattr(self._index, 'last_error', None) or 'not connected'}")
        for name, counter in self._counters.items():
            try:
                counter.tokenizer_version  # noqa: B018  (raises while the version is unknown)
            except TokenCountError as exc:
                reasons.append(f"tokenizer {name}: {exc}")
        return reasons

    async def send(self, send: Send) -> int:
        loaded = self._catalog.loaded
        status = 200 if loaded else 503
        body = {
            "status": "ready" if loaded else "not_ready",
            "catalog": "loaded" if loaded else "waiting for the control store",
            "cache_degraded": self.degraded_reasons(),
        }
        await send_bytes(send, status, JSON_HEADERS, orjson.dumps(body))
        return status
