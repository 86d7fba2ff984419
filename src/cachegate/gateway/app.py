"""The gateway as one ASGI application: the route table, authentication, and the lifespan that wires the ports.

The hot path is plain ASGI (no framework): a framework's request objects and routing cost a
measurable share of a proxy's throughput (shared/MEASUREMENTS.md), and the routes are few.
Each route is built here with the parts it needs; no module below imports this one.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachegate.asgi import ClientGone, Message, Receive, Refusal, Scope, Send, header, send_bytes
from cachegate.config import Config
from cachegate.core.markers import TtlPolicy
from cachegate.gateway import metrics
from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, bearer_secret
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
        self.keys = KeyResolver(store)
        self.catalog = CatalogCache(store, config.catalog_refresh_seconds)
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
            config.request_limits.to_limits(),
        )
        anthropic = AnthropicRequests(self.catalog, counters, config.body_limit_bytes, config.request_limits.max_depth)
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
        await self.catalog.stop()
        await self.sweeper.stop()
        await self.classifier.refreshes.stop()
        await self.ledger.stop()
        await self.upstream.aclose()
        for counter in self.counters.values():
            await counter.aclose()
        await self.index.aclose()
        await self.store.aclose()

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
        tracked = _TrackedSend(send)
        send = tracked
        try:
            key = await self.keys.resolve(bearer_secret(header(scope, b"authorization"), header(scope, b"x-api-key")))
            status = await route.handler(Request(scope, receive, send, key))
        except AuthError as exc:
            status = await _refuse(route, send, Refusal(401, str(exc), "invalid_api_key"))
        except AuthUnavailable as exc:
            status = await _refuse(
                route, send, Refusal(503, str(exc), "control_store_unavailable", type_="service_unavailable")
            )
        except Refusal as refusal:
            status = await _refuse(route, send, refusal)
        except ClientGone:
            status = 499  # nobody to answer
        except Exception:
            status = await _internal_error(route, tracked)
        metrics.labelled(metrics.REQUESTS, route.name, f"{status // 100}xx").inc()
        metrics.labelled(metrics.REQUEST_SECONDS, route.name).observe(time.perf_counter() - started)


class _TrackedSend:
    """The ASGI ``send`` of one request, remembering whether the response has started."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _internal_error(route: Route, send: _TrackedSend) -> int:
    """An unexpected error on a request's path (SPEC §11): logged with its traceback under a request
    id, counted, and answered with a JSON 500 in the client's dialect naming that id (if nothing
    was sent yet). The cache flow has billed the request if it got as far as its model."""
    request_id = f"req_{uuid.uuid4().hex}"
    log.exception("internal error on route %s, request id %s", route.name, request_id)
    metrics.labelled(metrics.INTERNAL_ERRORS, route.name).inc()
    if send.started:
        return 500  # the client sees its response break off
    refusal = Refusal(
        500,
        f"cachegate failed to serve this request (request id {request_id}); the error is logged under that id",
        "internal_error",
        type_="server_error",
    )
    await route.dialect.send_refusal(send, refusal, [(b"x-request-id", request_id.encode())])
    return 500


async def _refuse(route: Route, send: Send, refusal: Refusal) -> int:
    await route.dialect.send_refusal(send, refusal)
    return refusal.status
