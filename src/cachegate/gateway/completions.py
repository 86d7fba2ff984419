"""One chat-completions call with the cache contract around it (SPEC §2), whichever dialect the client speaks.

The chat route sends the client's own body; the Anthropic route sends its translation (SPEC §9).
Both then go through the same steps here: route the model, check the markers (a 400 before
anything is forwarded), forward the body without them, and classify concurrently — the
classification first runs once the request is on its way, so it never delays the upstream
request or its first byte. What comes back is relayed by the route in its client's format; the
``Exchange`` carries the cache work each moment of the response needs, and the ledger row is
recorded before the response's last byte (``Exchange.bill``), or when the call is over, however
it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from cachegate.asgi import Refusal
from cachegate.core.affinity import affinity_key
from cachegate.core.blocks import hashed_prompt
from cachegate.core.chat_shape import (
    DEFAULT_LIMITS,
    RequestLimits,
    ShapeError,
    check_chat_shape,
    check_depth,
    nesting_error,
)
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy, automatic_marker, strip_markers, validate_markers
from cachegate.core.types import Breakpoint, CacheTariff, Classification
from cachegate.gateway import metrics
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.classifier import CacheClassifier, cache_scope
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.forwarding import forwarded_body, upstream_headers
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.replicas import Replicas
from cachegate.gateway.routing import Request
from cachegate.gateway.salting import CacheSalts
from cachegate.store.base import Endpoint
from cachegate.tokens.base import TokenCounter, TokenCountError
from cachegate.upstream.base import Upstream, UpstreamRequest, UpstreamResponse, UpstreamUnavailable


@dataclass(frozen=True, slots=True)
class Arrival:
    """When a request arrived: tariffs and TTLs count from the wall clock, deadlines from the monotonic one."""

    at: float
    perf: float

    @classmethod
    def now(cls) -> Arrival:
        return cls(time.time(), time.perf_counter())


@dataclass(frozen=True, slots=True)
class Call:
    """A chat call whose upstream answered: what to relay, and the exchange that follows it."""

    exchange: Exchange
    response: UpstreamResponse


class Completions:
    def __init__(
        self,
        catalog: CatalogCache,
        ttl_policy: TtlPolicy,
        counters: Mapping[str, TokenCounter],
        classifier: CacheClassifier,
        upstream: Upstream,
        ledger: LedgerWriter,
        classify_deadline: float,
        *,
        salts: CacheSalts | None = None,
        drain_seconds: float = 0.0,
        limits: RequestLimits = DEFAULT_LIMITS,
        replicas: Replicas | None = None,
    ) -> None:
        self._replicas = replicas or Replicas()
        self.limits = limits  # what a chat body may hold (core.chat_shape); the chat route checks it
        self._catalog = catalog
        self._ttl_policy = ttl_policy
        self._counters = counters
        self._classifier = classifier
        self._upstream = upstream
        self._ledger = ledger
        self._classify_deadline = classify_deadline
        self._salts = salts
        self._drain_seconds = drain_seconds

    @contextlib.asynccontextmanager
    async def call(
        self,
        request: Request,
        body: dict[str, Any],
        raw: bytes | None,
        arrival: Arrival,
        *,
        client_wants_usage: bool,
        marker_param: Callable[[str], str] = str,
        automatic_caching: bool = False,
        route: str = "chat",
        diagnostics: bool = False,
        client_messages: Sequence[int | None] | None = None,
    ) -> AsyncIterator[Call]:
        """Forward ``body`` (a chat request with a string ``model``) and yield the upstream's answer.

        ``raw`` is the body as the client sent it, forwarded byte for byte when nothing needs to
        change (None: always serialize ``body``). ``marker_param`` turns a marker's path in
        ``body`` into the client's own path, for the 400 of an invalid marker. Raises ``Refusal``
        before anything is forwarded, and for an unreachable upstream (502, billed). With
        ``automatic_caching``, a model that caches markerless requests gets one (§3.1). With
        ``diagnostics`` the client asked for the miss diagnosis in the body (§14);
        ``client_messages`` maps each chat message to the client's own, for a translated request.
        On leaving, the response is released and the ledger row written.
        """
        alias: str = body["model"]
        model, endpoints = self._catalog.route(alias)
        tariff = self._catalog.current.tariff_at(alias, datetime.fromtimestamp(arrival.at, UTC))
        added = 0
        if automatic_caching and model.automatic_cache_ttl is not None:
            try:
                added = int(automatic_marker(body, model.automatic_cache_ttl, self._ttl_policy))
            except ValueError as exc:
                raise Refusal(400, str(exc), "invalid_request", "prompt_cache_retention") from exc
        breakpoints = checked_breakpoints(body, self._ttl_policy, marker_param)
        if len(endpoints) > 1:
            # Prefix affinity (SPEC §15): the key is hashed before anything is forwarded, from the
            # prompt's opening or first breakpoint only (core/affinity.py); one endpoint needs no key.
            first = breakpoints[0].block if breakpoints else None
            key = affinity_key(request.key.principal_id, alias, body, first)
            endpoints = self._replicas.order(key, endpoints)
        streaming = body.get("stream") is True
        exchange = Exchange(
            key=request.key,
            model=model,
            tariff=tariff,
            streaming=streaming,
            started_at=arrival.at,
            started_perf=arrival.perf,
            classify_deadline=self._classify_deadline,
            classifier=self._classifier,
            ledger=self._ledger,
            route=route,
            drain_seconds=self._drain_seconds,
            wants_diagnostics=diagnostics,
        )
        try:
            # A model's endpoints are salted alike (config.py), so the body suits any of them.
            salt = self._salts.salt(endpoints[0].name, request.key.principal_id) if self._salts is not None else None
            forward = _forwarded_body(
                body, raw, added, model.upstream_model, streaming and not client_wants_usage, salt
            )
            prompt_counter = self._counters.get(model.tokenizer)
            if prompt_counter is not None:
                exchange.count_prompt = functools.partial(
                    _count_whole_prompt, prompt_counter, body, breakpoints, self._classify_deadline
                )
            if tariff is not None and breakpoints:
                counter = self._counters[model.tokenizer]
                exchange.task = asyncio.create_task(
                    self._classify(
                        request.key.principal_id, alias, body, breakpoints, tariff, counter, arrival, client_messages
                    )
                )

            def upstream_request(endpoint: Endpoint) -> UpstreamRequest:
                headers = upstream_headers(request.scope, endpoint)
                return UpstreamRequest("POST", f"{endpoint.base_url}/chat/completions", headers, forward)

            endpoint, response = await self._replicas.send(self._upstream, endpoints, upstream_request)
        except UpstreamUnavailable as exc:
            exchange.vetoed("upstream_unreachable")
            exchange.status = 502
            await exchange.bill()
            raise Refusal(
                502, f"the upstream for model '{alias}' is unreachable", "upstream_unreachable", type_="upstream_error"
            ) from exc
        except Exception:
            await _bill_failure(exchange)
            raise
        exchange.status = response.status
        try:
            yield Call(exchange, response)
        except Refusal:
            raise  # the route set the status it answers with
        except Exception:
            await _bill_failure(exchange)
            raise
        finally:
            response.release()
            self._replicas.finished(endpoint)
            await exchange.bill()  # unless the route billed it before the response's last byte

    async def _classify(
        self,
        principal: str,
        alias: str,
        body: dict[str, Any],
        breakpoints: tuple[Breakpoint, ...],
        tariff: CacheTariff,
        counter: TokenCounter,
        arrival: Arrival,
        client_messages: Sequence[int | None] | None,
    ) -> Classification:
        scope = cache_scope(principal, alias, counter)
        if scope is None:
            return Classification.degraded_zeros()
        prompt = hashed_prompt(body, breakpoints)  # markers stripped by now: they are never hashed
        return await self._classifier.classify(scope, prompt, body, tariff, counter, arrival.at, client_messages)


async def _count_whole_prompt(
    counter: TokenCounter, body: dict[str, Any], breakpoints: tuple[Breakpoint, ...], deadline: float
) -> int | None:
    """Our count of the whole prompt (for a client that left before the upstream's usage); None if it fails."""
    try:
        counts = await asyncio.wait_for(counter.count(body, hashed_prompt(body, breakpoints), ()), deadline)
    except (TokenCountError, TimeoutError):
        return None
    return counts.total


def checked_breakpoints(
    body: dict[str, Any], policy: TtlPolicy, marker_param: Callable[[str], str] = str
) -> tuple[Breakpoint, ...]:
    """The breakpoints of a chat body's markers (SPEC §3); an invalid marker is a 400 naming the
    client's own path (``marker_param``), counted by reason."""
    try:
        return validate_markers(body, policy)
    except MarkerError as exc:
        metrics.labelled(metrics.MARKERS_REJECTED, exc.reason).inc()
        raise Refusal(400, exc.message, "invalid_cache_control", marker_param(exc.param)) from exc


def json_request(raw: bytes, max_depth: int) -> dict[str, Any]:
    """A request body as a JSON object with a string ``model``, as every route of the flow needs it; else 400.

    The nesting is bounded (``max_depth``) on every route: a body nested deeper than the JSON
    libraries go (orjson parses 1024 levels and writes 254) gets a 400 saying so.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _DEPTH_LIMIT in str(exc):
            raise _shape_refusal(nesting_error(max_depth)) from exc
        raise Refusal(400, "request body is not valid JSON", "invalid_json") from exc
    try:
        check_depth(body, max_depth)
    except ShapeError as exc:
        raise _shape_refusal(exc) from exc
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise Refusal(400, "request body must be a JSON object with a string 'model'", "invalid_request", "model")
    return body


_DEPTH_LIMIT: Final = "depth limit exceeded"  # orjson's message for a text nested past 1024 levels


def chat_request(raw: bytes, limits: RequestLimits) -> dict[str, Any]:
    """A chat-completions body, its shape checked (``core.chat_shape``) before anything else reads it."""
    body = json_request(raw, limits.max_depth)
    try:
        check_chat_shape(body, limits)
    except ShapeError as exc:
        raise _shape_refusal(exc) from exc
    return body


def _shape_refusal(error: ShapeError) -> Refusal:
    return Refusal(400, error.message, error.code, error.param)


async def _bill_failure(exchange: Exchange) -> None:
    """A request the gateway itself failed (an unexpected error): billed as a 500, nothing committed."""
    exchange.vetoed("internal_error")
    if not exchange.billed:
        exchange.status = 500
    await exchange.bill()


def _forwarded_body(
    body: dict[str, Any],
    raw: bytes | None,
    added_markers: int,
    upstream_model: str,
    force_usage: bool,
    salt: str | None = None,
) -> bytes:
    """What goes upstream (SPEC §2.4): markers stripped, then ``forwarding.forwarded_body``. ``raw``'s
    markers are those of ``body`` but the ``added_markers`` automatic caching put there."""
    removed = strip_markers(body)
    return forwarded_body(
        body, raw, upstream_model, force_usage=force_usage, salt=salt, markers=removed - added_markers
    )
