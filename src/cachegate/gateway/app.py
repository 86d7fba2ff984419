"""The gateway as one ASGI application: the route table, authentication, and the lifespan that wires the ports.

The hot path is plain ASGI (no framework): a framework's request objects and routing cost a
measurable share of a proxy's throughput (shared/MEASUREMENTS.md), and the routes are few.
Each route is built here with the parts it needs; no module below imports this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachegate.asgi import ClientGone, Receive, Refusal, Scope, Send, header, send_bytes
from cachegate.config import Config
from cachegate.core.markers import TtlPolicy
from cachegate.gateway import metrics
from cachegate.gateway.admission import InFlight
from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, TooManyFailures, bearer_secret
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.chat import ChatCompletions
from cachegate.gateway.classifier import CacheClassifier
from cachegate.gateway.completions import Completions
from cachegate.gateway.count_tokens import CountTokens
from cachegate.gateway.health import Readiness, send_alive
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.messages import AnthropicRequests, Messages
from cachegate.gateway.proxy import ModelList, Proxy
from cachegate.gateway.routing import Dialect, Request, Route
from cachegate.index.base import CacheIndex
from cachegate.index.sweeper import Sweeper
from cachegate.store.base import ControlStore
from cachegate.tokens.base import TokenCounter
from cachegate.upstream.base import Upstream

log = logging.getLogger(__name__)

_API_PREFIX: Final = "/v1/"


class Gateway:
    """Holds the wired ports and the routes; ``__call__`` is the ASGI entry point."""

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
        self.keys = KeyResolver(store, config.auth)
        self.catalog = CatalogCache(store, config.catalog_refresh_seconds, self.keys.revocations_seen)
        self.in_flight = InFlight(config.server.per_key_concurrency)
        self.classifier = CacheClassifier(index, config.deadlines.commit_seconds)
        self.ledger = LedgerWriter.from_config(store, config)
        self.sweeper = Sweeper(index, config.sweep_interval_seconds)
        self.readiness = Readiness(self.catalog, index, counters)
        ttl_policy = TtlPolicy(accepted=frozenset(config.accepted_ttls))
        completions = Completions(
            self.catalog,
            ttl_policy,
            counters,
            self.classifier,
            upstream,
            self.ledger,
            config.deadlines.classify_seconds,
            config.deadlines.disconnect_drain_seconds,
        )
        anthropic = AnthropicRequests(self.catalog, counters, config.body_limit_bytes)
        self._routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/chat/completions"): Route("chat", ChatCompletions(completions, config.body_limit_bytes)),
            ("GET", "/v1/models"): Route("models", ModelList(self.catalog)),
            ("POST", "/v1/messages"): Route(
                "messages", Messages(anthropic, completions, ttl_policy.accepted), Dialect.ANTHROPIC
            ),
            ("POST", "/v1/messages/count_tokens"): Route(
                "count_tokens", CountTokens(anthropic, self.catalog, ttl_policy, self.classifier), Dialect.ANTHROPIC
            ),
        }
        self._proxy = Route("proxy", Proxy(self.catalog, upstream, config.body_limit_bytes))

    async def startup(self) -> None:
        await self.catalog.load()
        self.catalog.start()
        self.classifier.refreshes.start()
        await self.ledger.start()  # replays what a crashed process left in the journal, before serving
        self.sweeper.start()

    async def shutdown(self) -> None:
        """Stop in the order that keeps the bill, each step bounded, so no hung part holds the rest.

        By now uvicorn has stopped accepting and drained the open requests (``serving.py``); the
        ones it cancelled at the drain deadline bill as they unwind, which is waited for first.
        Then the ledger: its rows are on local disk before anything else can hang, and what the
        store does not take in time stays in the journal for the next start. Then the rest.
        """
        limits = self.config.server
        await _bounded("requests in flight", self.in_flight.idle(), limits.shutdown_close_seconds)
        await self.ledger.stop(store_seconds=limits.shutdown_ledger_seconds)
        steps: list[tuple[str, Awaitable[None]]] = [
            ("catalog reload", self.catalog.stop()),
            ("index sweeper", self.sweeper.stop()),
            ("index refreshes", self.classifier.refreshes.stop()),
            ("upstream client", self.upstream.aclose()),
            *((f"token counter {name}", counter.aclose()) for name, counter in self.counters.items()),
            ("cache index", self.index.aclose()),
            ("control store", self.store.aclose()),
        ]
        for name, step in steps:
            await _bounded(name, step, limits.shutdown_close_seconds)

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

    def _route(self, method: str, path: str) -> Route | None:
        route = self._routes.get((method, path))
        if route is None and path.startswith(_API_PREFIX):
            return self._proxy
        return route

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await send_alive(send)
            return
        if path == "/readyz":
            await self.readiness.send(send)
            return
        if path == "/metrics" and method == "GET":
            await send_bytes(send, 200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], generate_latest())
            return
        route = self._route(method, path)
        if route is None:
            refusal = Refusal(404, f"no route for {method} {path}", "not_found")
            await refusal.send(send)
            return
        started = time.perf_counter()
        try:
            secret = bearer_secret(header(scope, b"authorization"), header(scope, b"x-api-key"))
            key = await self.keys.resolve(secret, _client_address(scope))
            with self.in_flight.admit(key.id):
                status = await route.handler(Request(scope, receive, send, key))
        except AuthError as exc:
            status = await _refuse(route, send, Refusal(401, str(exc), "invalid_api_key"))
        except TooManyFailures as exc:
            status = await _refuse(
                route, send, Refusal(429, str(exc), "too_many_failed_attempts", type_="rate_limit_error")
            )
        except AuthUnavailable as exc:
            status = await _refuse(
                route, send, Refusal(503, str(exc), "control_store_unavailable", type_="service_unavailable")
            )
        except Refusal as refusal:
            status = await _refuse(route, send, refusal)
        except ClientGone:
            status = 499  # nobody to answer
        metrics.labelled(metrics.REQUESTS, route.name, f"{status // 100}xx").inc()
        metrics.labelled(metrics.REQUEST_SECONDS, route.name).observe(time.perf_counter() - started)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


async def _bounded(name: str, step: Awaitable[None], seconds: float) -> None:
    """Await one shutdown step for at most ``seconds``; a step that hangs or fails is logged and left."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("shutdown: %s did not stop within %s s; going on without it", name, seconds)
    except Exception:
        log.exception("shutdown: %s failed to stop", name)


async def _refuse(route: Route, send: Send, refusal: Refusal) -> int:
    await route.dialect.send_refusal(send, refusal)
    return refusal.status
