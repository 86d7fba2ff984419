"""The gateway as one ASGI application: routing, authentication, and the lifespan that wires the ports.

The hot path is plain ASGI (no framework): a framework's request objects and routing cost a
measurable share of a proxy's throughput (shared/MEASUREMENTS.md), and the routes are few.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachegate.asgi import (
    JSON_HEADERS,
    ClientGone,
    Headers,
    Receive,
    Refusal,
    Scope,
    Send,
    header,
    send_bytes,
    send_error,
)
from cachegate.config import Config
from cachegate.core.markers import TtlPolicy
from cachegate.gateway import metrics
from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, bearer_secret
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.chat import chat_completions
from cachegate.gateway.classifier import CacheClassifier
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.proxy import proxy
from cachegate.index.base import CacheIndex
from cachegate.index.sweeper import Sweeper
from cachegate.store.base import ControlStore, Endpoint
from cachegate.tokens.base import TokenCounter
from cachegate.upstream.base import HOP_BY_HOP, Upstream

log = logging.getLogger(__name__)

# Never forwarded upstream: the client's own credentials (SPEC §12) and what the gateway sets itself.
_DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {b"authorization", b"x-api-key", b"cookie"}


class Gateway:
    """Holds the wired ports; ``__call__`` is the ASGI entry point."""

    def __init__(
        self,
        config: Config,
        store: ControlStore,
        index: CacheIndex,
        counters: dict[str, TokenCounter],
        upstream: Upstream,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.counters = counters
        self.upstream = upstream
        self.ttl_policy = TtlPolicy(accepted=frozenset(config.accepted_ttls))
        self.keys = KeyResolver(store)
        self.catalog = CatalogCache(store, config.catalog_refresh_seconds)
        self.classifier = CacheClassifier(index, config.deadlines.commit_seconds)
        self.ledger = LedgerWriter.from_config(store, config)
        self.sweeper = Sweeper(index, config.sweep_interval_seconds)

    async def startup(self) -> None:
        await self.catalog.load()
        self.catalog.start()
        self.classifier.refreshes.start()
        await self.ledger.start()  # replays what a crashed process left in the journal, before serving
        self.sweeper.start()

    async def shutdown(self) -> None:
        await self.catalog.stop()
        await self.sweeper.stop()
        await self.classifier.refreshes.stop()
        await self.ledger.stop()
        await self.upstream.aclose()
        for counter in self.counters.values():
            await counter.aclose()
        await self.index.aclose()
        await self.store.aclose()

    def upstream_headers(self, scope: Scope, endpoint: Endpoint, *, keep_encoding: bool = False) -> Headers:
        headers = [(k, v) for k, v in scope["headers"] if k not in _DROPPED_REQUEST_HEADERS]
        if not keep_encoding:
            # The chat path rewrites the usage, so it needs a body it can read.
            headers = [(k, v) for k, v in headers if k != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        if endpoint.api_key:
            headers.append((b"authorization", b"Bearer " + endpoint.api_key.encode("latin-1")))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await send_bytes(send, 200, JSON_HEADERS, b'{"status":"ok"}')
            return
        if path == "/metrics" and method == "GET":
            await send_bytes(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], generate_latest())
            return
        if not path.startswith("/v1/"):
            await send_error(send, 404, f"no route for {method} {path}", "invalid_request_error", "not_found")
            return
        started = time.perf_counter()
        route = "chat" if path == "/v1/chat/completions" and method == "POST" else "proxy"
        try:
            key = await self.keys.resolve(bearer_secret(header(scope, b"authorization"), header(scope, b"x-api-key")))
        except AuthError as exc:
            await send_error(send, 401, str(exc), "invalid_request_error", "invalid_api_key")
            metrics.labelled(metrics.REQUESTS, route, "4xx").inc()
            return
        except AuthUnavailable as exc:
            await send_error(send, 503, str(exc), "service_unavailable", "control_store_unavailable")
            metrics.labelled(metrics.REQUESTS, route, "5xx").inc()
            return
        try:
            if route == "chat":
                status = await chat_completions(self, key, scope, receive, send)
            elif path == "/v1/models" and method == "GET":
                status = await self._models(send)
            else:
                status = await proxy(self, scope, receive, send)
        except Refusal as refusal:
            await refusal.send(send)
            status = refusal.status
        except ClientGone:
            status = 499  # nobody to answer
        metrics.labelled(metrics.REQUESTS, route, f"{status // 100}xx").inc()
        metrics.labelled(metrics.REQUEST_SECONDS, route).observe(time.perf_counter() - started)

    async def _models(self, send: Send) -> int:
        """The models a client may name: the catalog's aliases, not the upstreams' names."""
        data: list[dict[str, Any]] = [
            {"id": alias, "object": "model", "owned_by": "cachegate"} for alias in sorted(self.catalog.current.models)
        ]
        await send_bytes(send, 200, JSON_HEADERS, orjson.dumps({"object": "list", "data": data}))
        return 200
