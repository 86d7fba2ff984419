"""The gateway as one ASGI application: the route table, authentication, and the lifespan that wires the ports.

The hot path is plain ASGI (no framework): a framework's request objects and routing cost a
measurable share of a proxy's throughput (shared/MEASUREMENTS.md), and the routes are few.
Each route is built here with the parts it needs; no module below imports this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Final

from cachegate.admin_api.app import build_admin_app
from cachegate.asgi import ClientGone, Headers, Message, Receive, Refusal, Scope, Send, header
from cachegate.config import Config
from cachegate.core.markers import TtlPolicy
from cachegate.core.paths import DotSegment, normalised_path
from cachegate.gateway import metrics
from cachegate.gateway.admission import InFlight
from cachegate.gateway.auth import AuthError, AuthUnavailable, KeyResolver, TooManyFailures, bearer_secret
from cachegate.gateway.budgets import NO_RETRY, BudgetExceeded, Budgets
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.chat import ChatCompletions
from cachegate.gateway.classifier import CacheClassifier
from cachegate.gateway.completions import Completions
from cachegate.gateway.count_tokens import CountTokens
from cachegate.gateway.health import Readiness, send_alive
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.messages import AnthropicRequests, Messages
from cachegate.gateway.metered import COMPLETIONS, EMBEDDINGS, RESPONSES, MeteredRoute, OpenAiApi
from cachegate.gateway.metrics import metrics_page, send_metrics
from cachegate.gateway.models import MODEL_PREFIX, ModelDetail, ModelList
from cachegate.gateway.rate_limits import RateLimits, rate_limiter
from cachegate.gateway.replicas import Replicas
from cachegate.gateway.routing import Dialect, Request, Route
from cachegate.gateway.salting import CacheSalts
from cachegate.gateway.usage import TenantUsage
from cachegate.index.base import CacheIndex
from cachegate.index.sweeper import Sweeper
from cachegate.limiter.base import RateLimiter
from cachegate.store.base import ControlStore
from cachegate.tokens.base import TokenCounter
from cachegate.upstream.base import Upstream

log = logging.getLogger(__name__)

_STARTING: Final = Refusal(
    503,
    "cachegate is starting: the control store has not been reached yet",
    "control_store_unavailable",
    type_="service_unavailable",
)


class Gateway:
    """Holds the wired ports and the routes; ``__call__`` is the ASGI entry point."""

    def __init__(
        self,
        config: Config,
        store: ControlStore,
        index: CacheIndex,
        counters: dict[str, TokenCounter],
        upstream: Upstream,
        limiter: RateLimiter | None = None,
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
        self.ledger = LedgerWriter.from_config(store, config, self.in_flight.count)
        self.budgets = Budgets(store, self.catalog, self.ledger, config.budgets.refresh_seconds)
        limits = config.rate_limits
        self.rate_limits = RateLimits(self.catalog, limiter or rate_limiter(limits), retry_seconds=limits.retry_seconds)
        self.ledger.observe(self.rate_limits)
        self.sweeper = Sweeper(index, config.sweep_interval_seconds, retention=config.miss_retention_seconds)
        self.readiness = Readiness(self.catalog, index, counters)
        ttl_policy = TtlPolicy(accepted=frozenset(config.accepted_ttls))
        salts = CacheSalts.from_config(config)
        replicas = Replicas(config.routing.max_in_flight, config.routing.down_seconds)
        completions = Completions(
            self.catalog,
            ttl_policy,
            counters,
            self.classifier,
            upstream,
            self.ledger,
            config.deadlines.classify_seconds,
            salts=salts,
            drain_seconds=config.deadlines.disconnect_drain_seconds,
            limits=config.request_limits.to_limits(),
            replicas=replicas,
        )
        anthropic = AnthropicRequests(self.catalog, counters, config.body_limit_bytes, config.request_limits.max_depth)

        def metered(api: OpenAiApi) -> Route:
            return Route(
                api.name,
                MeteredRoute(
                    api,
                    self.catalog,
                    counters,
                    upstream,
                    self.ledger,
                    salts,
                    config.body_limit_bytes,
                    config.request_limits.max_depth,
                    replicas,
                ),
                billed=True,
            )

        # The allowlist (SPEC §2, other routes): every other method and path is a local 404.
        self._routes: dict[tuple[str, str], Route] = {
            ("POST", "/v1/chat/completions"): Route(
                "chat", ChatCompletions(completions, config.body_limit_bytes), billed=True
            ),
            ("POST", "/v1/completions"): metered(COMPLETIONS),
            ("POST", "/v1/responses"): metered(RESPONSES),
            ("POST", "/v1/embeddings"): metered(EMBEDDINGS),
            ("GET", "/v1/models"): Route("models", ModelList(self.catalog)),
            ("GET", "/metrics"): Route("metrics", metrics_page),
            ("GET", "/v1/usage"): Route("usage", TenantUsage(store)),
            ("POST", "/v1/messages"): Route(
                "messages", Messages(anthropic, completions, ttl_policy.accepted), Dialect.ANTHROPIC, billed=True
            ),
            ("POST", "/v1/messages/count_tokens"): Route(
                "count_tokens", CountTokens(anthropic, self.catalog, ttl_policy, self.classifier), Dialect.ANTHROPIC
            ),
        }
        self._model_detail = Route("models", ModelDetail(self.catalog))
        self.admin = build_admin_app(store, config, self.keys, self.catalog)  # every path under /admin (SPEC §13)

    async def startup(self) -> None:
        """Start serving at once, whichever backend is down (SPEC §11): without a catalog every /v1
        request is answered 503 until the control store has been reached."""
        await self.catalog.start()
        self.classifier.refreshes.start()
        await self.ledger.start()  # replays what a crashed process left in the journal, before serving
        await self.budgets.start()  # the spend of every key, from the store's totals (after the replay)
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
            ("budget spend reload", self.budgets.stop()),
            ("rate limiter", self.rate_limits.limiter.aclose()),
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
        """The route of a normalised path, or None: only what the allowlist names is served."""
        route = self._routes.get((method, path))
        if route is None and method == "GET" and path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX):
            return self._model_detail
        return route

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        try:
            path = normalised_path(scope["path"], scope.get("raw_path"))
        except DotSegment as exc:
            await Refusal(400, str(exc), "invalid_path").send(send)
            return
        scope["path"] = path
        if path == "/admin" or path.startswith("/admin/"):
            answered = _TrackedSend(send)
            await self.admin(scope, receive, answered)
            metrics.labelled(metrics.REQUESTS, "admin", f"{answered.status // 100}xx").inc()
            return
        if path == "/healthz":
            await send_alive(send)
            return
        if path == "/readyz":
            await self.readiness.send(send)
            return
        if path == "/metrics" and method == "GET" and not self.config.metrics.require_admin_key:
            await send_metrics(send)  # opened by the operator: no key asked (SPEC §12)
            return
        route = self._route(method, path)
        if route is None:
            refusal = Refusal(404, f"no route for {method} {path}", "not_found")
            await refusal.send(send)
            return
        if not self.catalog.loaded:
            await _refuse(route, send, _STARTING)
            metrics.labelled(metrics.REQUESTS, route.name, "5xx").inc()
            return
        started = time.perf_counter()
        tracked = _TrackedSend(send)
        send = tracked
        try:
            secret = bearer_secret(header(scope, b"authorization"), header(scope, b"x-api-key"))
            key = await self.keys.resolve(secret, _client_address(scope))
            with self.in_flight.admit(key.id):
                tracked.headers, over_limit = await self.rate_limits.check(key, route.dialect, take=route.billed)
                if over_limit is not None:
                    raise over_limit
                if route.billed:
                    self.budgets.check(key)
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
        except BudgetExceeded as refusal:
            tracked.headers = [*tracked.headers, *NO_RETRY]
            status = await _refuse(route, send, refusal)
        except Refusal as refusal:
            status = await _refuse(route, send, refusal)
        except ClientGone:
            status = 499  # nobody to answer
        except Exception:
            status = await _internal_error(route, tracked)
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


class _TrackedSend:
    """The ASGI ``send`` of one request, remembering whether the response has started and its status,
    and adding ``headers`` (the key's rate-limit headers) to the response whichever route sends it."""

    __slots__ = ("_send", "headers", "started", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.status = 0
        self.headers: Headers = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            if self.headers:
                message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
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
