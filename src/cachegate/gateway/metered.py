"""The OpenAI routes beside chat: ``/v1/completions``, ``/v1/responses``, ``/v1/embeddings`` (SPEC §2, other routes).

cachegate keeps no cache of its own on these routes, but they go to the same engines, so each is
a full route: authenticated, routed by ``model``, priced from the upstream's usage and billed in
the ledger under its own route name, with the upstream's cache counts and engine telemetry removed
from what the client sees (SPEC §8, §12). The body is otherwise forwarded as the client sent it.
A stream is relayed frame by frame as it arrives; only frames that may carry usage or telemetry
are parsed, and the row is billed before the stream's last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cachegate.asgi import Receive, Refusal, Send, media_type, read_body, send_bytes
from cachegate.core.affinity import tenant_key
from cachegate.core.pricing import price
from cachegate.core.sse import (
    SseFramer,
    SseFrameTooLarge,
    event_json,
    is_done,
    is_usage_frame,
    may_carry_usage_or_error,
    replace_event_json,
)
from cachegate.core.telemetry import may_carry_telemetry, scrub_telemetry
from cachegate.core.types import CacheStats
from cachegate.core.usage import scrub_usage, upstream_cached_tokens
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.completions import json_request
from cachegate.gateway.forwarding import forwarded_body, relayed_headers, upstream_headers
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.replicas import Replicas
from cachegate.gateway.routing import Request
from cachegate.gateway.salting import CacheSalts
from cachegate.gateway.streaming import watch_disconnect
from cachegate.store.base import ApiKey, Endpoint, LedgerRow, Model
from cachegate.tokens.base import TextCounter, TokenCounter, TokenCountError
from cachegate.upstream.base import Upstream, UpstreamBroken, UpstreamRequest, UpstreamResponse, UpstreamUnavailable

log = logging.getLogger(__name__)

Texts = Callable[[Mapping[str, Any]], list[str] | None]
"""The texts of a request's prompt (or of a response's completion), for our own count; None: not plain texts."""


@dataclass(frozen=True, slots=True)
class OpenAiApi:
    """What differs between the metered routes."""

    name: str  # the route's name in the ledger and the metrics
    upstream_path: str  # appended to the endpoint's base URL (which ends in /v1)
    prompt_field: str  # the usage field of the prompt's tokens
    completion_field: str | None  # the usage field of the completion's tokens; None: no completion
    stream_usage_option: bool  # streams report usage only when stream_options.include_usage asks
    salted: bool  # requests take the endpoint's cache_salt (vLLM reads it on this route)
    prompt_texts: Texts
    completion_texts: Texts
    # A usage object whose schema requires cached_tokens (the Responses API's input_tokens_details):
    # it gets cachegate's count, 0 on these routes, instead of losing the field.
    required_cached_details: str | None = None


def _plain_texts(value: Any) -> list[str] | None:
    """A string or a list of strings (a prompt, an embedding input); token ids and anything else: None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def _responses_input_texts(body: Mapping[str, Any]) -> list[str] | None:
    """The Responses input when it is plain text: ``input`` a string, plus ``instructions``."""
    texts = _plain_texts(body.get("input"))
    if texts is None or len(texts) != 1:
        return None
    instructions = body.get("instructions")
    return [instructions, *texts] if isinstance(instructions, str) else texts


def _choice_texts(payload: Mapping[str, Any]) -> list[str] | None:
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return None
    texts = [choice.get("text") for choice in choices if isinstance(choice, dict)]
    return [text for text in texts if isinstance(text, str)]


def _output_texts(payload: Mapping[str, Any]) -> list[str] | None:
    output = payload.get("output")
    if not isinstance(output, list):
        return None
    return [
        part["text"]
        for item in output
        if isinstance(item, dict) and isinstance(item.get("content"), list)
        for part in item["content"]
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


COMPLETIONS = OpenAiApi(
    "completions",
    "/completions",
    "prompt_tokens",
    "completion_tokens",
    stream_usage_option=True,
    salted=True,
    prompt_texts=lambda body: _plain_texts(body.get("prompt")),
    completion_texts=_choice_texts,
)
RESPONSES = OpenAiApi(
    "responses",
    "/responses",
    "input_tokens",
    "output_tokens",
    stream_usage_option=False,  # a Responses stream always ends with the usage in response.completed
    salted=True,
    prompt_texts=_responses_input_texts,
    completion_texts=_output_texts,
    required_cached_details="input_tokens_details",
)
EMBEDDINGS = OpenAiApi(
    "embeddings",
    "/embeddings",
    "prompt_tokens",
    None,
    stream_usage_option=False,
    salted=False,  # an embedding is one forward pass: nothing is generated after a cached prefix
    prompt_texts=lambda body: _plain_texts(body.get("input")),
    completion_texts=lambda payload: None,
)


@dataclass(slots=True)
class Meter:
    """One metered request's tokens as the response reveals them, and its ledger row."""

    api: OpenAiApi
    key: ApiKey
    model: Model
    streaming: bool
    started_at: float
    started_perf: float
    ledger: LedgerWriter
    counter: TextCounter | None  # for a prompt the upstream sent no usage for
    prompt_texts: list[str] | None
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream_cached: int | None = None
    counted_prompt_tokens: int | None = None
    completion_texts: list[str] | None = None
    billed: bool = False

    def take_usage(self, usage: dict[str, Any]) -> None:
        """Read the counts from an upstream ``usage`` and remove its cache fields, in place (§8)."""
        prompt = usage.get(self.api.prompt_field)
        if _is_count(prompt):
            self.prompt_tokens = prompt
        if self.api.completion_field is not None:
            completion = usage.get(self.api.completion_field)
            if _is_count(completion):
                self.completion_tokens = completion
        cached = upstream_cached_tokens(usage)
        if cached is not None:
            self.upstream_cached = cached
        scrub_usage(usage)
        details_name = self.api.required_cached_details
        if details_name is not None:
            details = usage.get(details_name)
            if isinstance(details, dict):
                details["cached_tokens"] = 0

    async def bill(self) -> None:
        """Record the ledger row, once; awaited before the response's last byte, else when the route ends."""
        if self.billed:
            return
        self.billed = True
        if self.prompt_tokens is None and 200 <= self.status < 300:
            await self._count_ourselves()
        prompt, completion = self.prompt_tokens or 0, self.completion_tokens or 0
        cost, list_cost = price(prompt, completion, CacheStats(), self.model.input_price, self.model.output_price, None)
        await self.ledger.record(
            LedgerRow(
                at=datetime.fromtimestamp(self.started_at, UTC),
                principal_id=self.key.principal_id,
                key_id=self.key.id,
                model=self.model.alias,
                status=self.status,
                streaming=self.streaming,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cache_read_tokens=0,
                cache_creation_5m_tokens=0,
                cache_creation_1h_tokens=0,
                cache_creation_24h_tokens=0,
                upstream_cached_tokens=self.upstream_cached,
                cost=cost,
                list_cost=list_cost,
                latency_ms=(time.perf_counter() - self.started_perf) * 1000.0,
                degraded=False,
                counted_prompt_tokens=self.counted_prompt_tokens,
                route=self.api.name,
                row_id=self.ledger.new_row_id(),
            )
        )

    async def _count_ourselves(self) -> None:
        """A 2xx without usage: bill what our counter says of the prompt (and of a JSON completion)."""
        if self.counter is None or not self.prompt_texts:
            log.warning("a %s response came without usage and its prompt cannot be counted here", self.api.name)
            return
        try:
            self.prompt_tokens = self.counted_prompt_tokens = sum(await self.counter.count_texts(self.prompt_texts))
            if self.completion_tokens is None and self.completion_texts:
                self.completion_tokens = sum(await self.counter.count_texts(self.completion_texts))
        except TokenCountError as exc:
            log.warning("a %s response came without usage and its count failed: %s", self.api.name, exc)


class MeteredRoute:
    def __init__(
        self,
        api: OpenAiApi,
        catalog: CatalogCache,
        counters: Mapping[str, TokenCounter],
        upstream: Upstream,
        ledger: LedgerWriter,
        salts: CacheSalts,
        body_limit: int,
        max_depth: int,
        replicas: Replicas | None = None,
    ) -> None:
        self._replicas = replicas or Replicas()
        self._api = api
        self._catalog = catalog
        self._counters = counters
        self._upstream = upstream
        self._ledger = ledger
        self._salts = salts
        self._body_limit = body_limit
        self._max_depth = max_depth

    async def __call__(self, request: Request) -> int:
        started_at, started_perf = time.time(), time.perf_counter()
        raw = await read_body(request.receive, self._body_limit)
        body = json_request(raw, self._max_depth)
        model, endpoints = self._catalog.route(body["model"])
        if len(endpoints) > 1:
            # These routes have no prompt blocks to be keyed by: a tenant keeps to its own endpoint (SPEC §15).
            endpoints = self._replicas.order(tenant_key(request.key.principal_id, model.alias), endpoints)
        streaming = body.get("stream") is True
        client_wants_usage = not self._api.stream_usage_option or _asks_for_usage(body)
        salt = self._salts.salt(endpoints[0].name, request.key.principal_id) if self._api.salted else None
        forward = forwarded_body(
            body, raw, model.upstream_model, force_usage=streaming and not client_wants_usage, salt=salt
        )
        counter = self._counters.get(model.tokenizer)
        meter = Meter(
            self._api,
            request.key,
            model,
            streaming,
            started_at,
            started_perf,
            self._ledger,
            counter if isinstance(counter, TextCounter) else None,
            self._api.prompt_texts(body),
        )

        def upstream_request(endpoint: Endpoint) -> UpstreamRequest:
            headers = upstream_headers(request.scope, endpoint)
            return UpstreamRequest("POST", f"{endpoint.base_url}{self._api.upstream_path}", headers, forward)

        try:
            endpoint, response = await self._replicas.send(self._upstream, endpoints, upstream_request)
        except UpstreamUnavailable as exc:
            meter.status = 502
            await meter.bill()
            message = f"the upstream for model '{body['model']}' is unreachable"
            raise Refusal(502, message, "upstream_unreachable", type_="upstream_error") from exc
        meter.status = response.status
        try:
            if media_type(response.headers) == b"text/event-stream":
                await _StreamRelay(meter, request.send, client_wants_usage).run(response, request.receive)
            else:
                await _relay_json(meter, response, request.send)
        finally:
            response.release()
            self._replicas.finished(endpoint)
            await meter.bill()  # unless billed before the response's last byte
        return meter.status


def _asks_for_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return body.get("stream") is True and isinstance(options, dict) and options.get("include_usage") is True


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usage_in(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The usage of a response or chunk, or of a Responses event's ``response``."""
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return usage
    response = payload.get("response")
    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
        return response["usage"]
    return None


async def _relay_json(meter: Meter, response: UpstreamResponse, send: Send) -> None:
    try:
        data = await response.read()
    except UpstreamBroken as exc:
        meter.status = 502
        raise Refusal(502, "the upstream response broke off", "upstream_broken", type_="upstream_error") from exc
    headers = relayed_headers(response.headers)
    ok = 200 <= response.status < 300
    countable = ok and meter.counter is not None  # a body without usage is read for its completion's texts
    if media_type(response.headers) in (None, b"application/json") and (
        b'"usage"' in data or may_carry_telemetry(data) or countable
    ):
        data = _scrubbed_json(meter, data, ok=ok)
    await meter.bill()  # billed before the answer is released
    await send_bytes(send, response.status, headers, data)


def _scrubbed_json(meter: Meter, data: bytes, *, ok: bool) -> bytes:
    """The body with usage and telemetry scrubbed, its counts taken; the same bytes when nothing changed."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(payload, dict):
        return data
    changed = scrub_telemetry(payload)
    usage = _usage_in(payload)
    if usage is not None:
        meter.take_usage(usage)
        changed = True
    elif ok:
        meter.completion_texts = meter.api.completion_texts(payload)
    if not changed:
        return data
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:  # nested past orjson's limit: it cannot be scrubbed, so it is not sent
        meter.status = 502
        message = "the upstream response could not be relayed"
        raise Refusal(502, message, "upstream_invalid", type_="upstream_error") from exc


class _StreamRelay:
    """One SSE stream: frames pass as they came unless they carry usage or telemetry."""

    def __init__(self, meter: Meter, send: Send, client_wants_usage: bool) -> None:
        self._meter = meter
        self._send = send
        self._client_wants_usage = client_wants_usage
        self._disconnected = asyncio.Event()

    async def run(self, response: UpstreamResponse, receive: Receive) -> None:
        headers = relayed_headers(response.headers)
        await self._send({"type": "http.response.start", "status": response.status, "headers": headers})
        watcher = asyncio.create_task(watch_disconnect(receive, self._disconnected))
        framer = SseFramer()
        try:
            async for chunk in response.chunks():
                plain, events = framer.split(chunk)
                if plain:
                    await self._forward(plain)  # content frames, nearly all of a stream, pass as they came
                for event in events:
                    await self._on_event(event)
                if self._disconnected.is_set():
                    return  # releasing the unread response drops the upstream connection
            tail = framer.flush()
            if tail:
                await self._on_event(tail)
        except (UpstreamBroken, SseFrameTooLarge):
            return  # leave the response incomplete: the server drops the connection mid-body
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._meter.bill()  # a stream without [DONE] (every Responses stream) ends here
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _forward(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def _on_event(self, event: bytes) -> None:
        if is_done(event):
            await self._meter.bill()  # before [DONE]: a client that saw the end has been billed
            await self._forward(event)
            return
        if not may_carry_usage_or_error(event):
            await self._forward(event)
            return
        payload = event_json(event)
        if not isinstance(payload, dict):
            await self._forward(event)
            return
        changed = scrub_telemetry(payload)
        usage = _usage_in(payload)
        if usage is not None:
            self._meter.take_usage(usage)
            changed = True
            if is_usage_frame(payload) and not self._client_wants_usage:
                return  # asked for by the gateway, not by the client
        await self._forward(replace_event_json(event, payload) if changed else event)
