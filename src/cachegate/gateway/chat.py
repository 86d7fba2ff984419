"""POST /v1/chat/completions: the request flow of SPEC §2.

Validate, strip the markers, start the classification concurrently, forward, and splice the
usage into whichever response comes back: a JSON body here, an SSE stream in ``streaming``.
The classification is awaited only when the usage is needed, so it never delays the upstream
request or the first streamed byte.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from cachegate.asgi import Receive, Refusal, Send, media_type, read_body, send_bytes
from cachegate.core.blocks import hashed_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import strip_markers, validate_markers
from cachegate.core.types import Breakpoint, CacheTariff, Classification, Scope
from cachegate.gateway import metrics
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.streaming import relay_stream
from cachegate.store.base import ApiKey
from cachegate.tokens.base import TokenCounter
from cachegate.upstream.base import UpstreamBroken, UpstreamRequest, UpstreamUnavailable

if TYPE_CHECKING:
    from cachegate.gateway.app import Gateway

DEGRADED_HEADER = (b"x-cachegate-cache", b"degraded")


async def chat_completions(gateway: Gateway, key: ApiKey, scope: dict[str, Any], receive: Receive, send: Send) -> int:
    """Serve one chat completion; returns the status sent to the client (raises Refusal before forwarding)."""
    started_at = time.time()
    started_perf = time.perf_counter()
    raw = await read_body(receive, gateway.config.body_limit_bytes)
    body = _chat_request(raw)
    alias: str = body["model"]
    model, endpoint = gateway.catalog.route(alias)
    tariff = gateway.catalog.current.tariff_at(alias, datetime.fromtimestamp(started_at, UTC))
    try:
        breakpoints = validate_markers(body, gateway.ttl_policy)
    except MarkerError as exc:
        metrics.labelled(metrics.MARKERS_REJECTED, exc.reason).inc()
        raise Refusal(400, exc.message, "invalid_cache_control", exc.param) from exc

    streaming = body.get("stream") is True
    client_wants_usage = _asks_for_usage(body)
    forward = _forwarded_body(body, raw, model.upstream_model, streaming and not client_wants_usage)
    exchange = Exchange(
        key=key,
        model=model,
        tariff=tariff,
        streaming=streaming,
        started_at=started_at,
        started_perf=started_perf,
        classify_deadline=gateway.config.deadlines.classify_seconds,
        classifier=gateway.classifier,
        ledger=gateway.ledger,
    )
    if tariff is not None and breakpoints:
        counter = gateway.counters[model.tokenizer]
        cache_scope = Scope(key.principal_id, alias, counter.tokenizer_version)
        # Concurrent with the upstream request: it must never delay it (SPEC §2.3). It first
        # runs when the request is on its way, so hashing a long prompt does not delay it either.
        exchange.task = asyncio.create_task(
            _classify(gateway, cache_scope, body, breakpoints, tariff, counter, started_at)
        )

    request = UpstreamRequest(
        "POST", f"{endpoint.base_url}/chat/completions", gateway.upstream_headers(scope, endpoint), forward
    )
    try:
        response = await gateway.upstream.send(request)
    except UpstreamUnavailable as exc:
        exchange.vetoed("upstream_unreachable")
        exchange.status = 502
        await exchange.bill()
        raise Refusal(
            502, f"the upstream for model '{alias}' is unreachable", "upstream_unreachable", type_="upstream_error"
        ) from exc

    exchange.status = response.status
    try:
        if media_type(response.headers) == b"text/event-stream":
            await relay_stream(exchange, response, receive, send, client_wants_usage)
        else:
            await _relay_json(exchange, response, send)
    finally:
        response.release()
        await exchange.bill()  # if the response did not reach its last byte (or never started)
    return exchange.status


async def _classify(
    gateway: Gateway,
    cache_scope: Scope,
    body: dict[str, Any],
    breakpoints: tuple[Breakpoint, ...],
    tariff: CacheTariff,
    counter: TokenCounter,
    started_at: float,
) -> Classification:
    prompt = hashed_prompt(body, breakpoints)  # markers stripped by now: they are never hashed
    return await gateway.classifier.classify(cache_scope, prompt, body, tariff, counter, started_at)


def _chat_request(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, "request body is not valid JSON", "invalid_json") from exc
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise Refusal(400, "request body must be a JSON object with a string 'model'", "invalid_request", "model")
    return body


def _asks_for_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return body.get("stream") is True and isinstance(options, dict) and options.get("include_usage") is True


def _forwarded_body(body: dict[str, Any], raw: bytes, upstream_model: str, force_usage: bool) -> bytes:
    """What goes upstream (SPEC §2.4): markers stripped, ``model`` renamed, stream usage forced on.

    ``body`` is changed in place; an unchanged request is forwarded byte for byte.
    """
    changed = strip_markers(body)
    if body["model"] != upstream_model:
        body["model"] = upstream_model
        changed = True
    if force_usage:
        options = body.get("stream_options")
        if isinstance(options, dict):
            options["include_usage"] = True
        else:
            body["stream_options"] = {"include_usage": True}
        changed = True
    return orjson.dumps(body) if changed else raw


async def _relay_json(exchange: Exchange, response: Any, send: Send) -> None:
    try:
        data: bytes = await response.read()
    except UpstreamBroken as exc:
        exchange.vetoed("upstream_broken")
        exchange.status = 502
        raise Refusal(502, "the upstream response broke off", "upstream_broken", type_="upstream_error") from exc
    headers = [(k, v) for k, v in response.headers if k != b"content-length"]
    ok = 200 <= response.status < 300
    kind = media_type(response.headers)
    payload = _usage_payload(data) if ok and kind in (None, b"application/json") else None
    if payload is None:
        exchange.vetoed("non_2xx" if not ok else "no_usage")
        await exchange.bill()  # billed before the answer is released (issue 15)
        await send_bytes(send, response.status, headers, data)
        return
    await exchange.apply_usage(payload["usage"])
    await exchange.succeeded()  # read-your-writes: entries land before the body is sent (§7.4)
    if exchange.degraded:
        headers.append(DEGRADED_HEADER)
    await exchange.bill()  # billed before the answer is released (issue 15)
    await send_bytes(send, response.status, headers, orjson.dumps(payload))


def _usage_payload(data: bytes) -> dict[str, Any] | None:
    """The parsed body if it is a JSON object carrying a usage object, else None (left untouched)."""
    if b'"usage"' not in data:
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
        return payload
    return None
