"""POST /v1/messages: the Anthropic dialect of the request flow (SPEC §9).

The client's Messages request is translated to a chat-completions request (``core/anthropic``)
and goes through the same cache flow as a chat request (``completions.Completions``): the same
markers, blocks, hashes, counts, tariffs and ledger. Only the edges differ: errors in
Anthropic's shape, and the answer translated back — a message here, events in
``messages_stream``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

import orjson

from cachegate.asgi import JSON_HEADERS, Refusal, media_type, read_body, send_bytes
from cachegate.core.anthropic.request import (
    AnthropicRequestError,
    ReasoningSwitch,
    TranslatedRequest,
    client_param,
    translate_request,
)
from cachegate.core.anthropic.response import translate_response
from cachegate.core.chat_shape import DEFAULT_MAX_DEPTH
from cachegate.core.types import TtlTier
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.chat import DEGRADED_HEADER, usage_payload
from cachegate.gateway.completions import Arrival, Completions, json_request
from cachegate.gateway.departure import read_body_or_bill_departure
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.messages_stream import final_usage, relay_messages_stream
from cachegate.gateway.routing import Request
from cachegate.tokens.base import TokenCounter
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse

_UPSTREAM_MESSAGE_CHARS: Final = 500


class AnthropicRequests:
    """Reads an Anthropic request and translates it for the model it names; shared by the Messages
    and count_tokens routes, so both see one request the same way."""

    def __init__(
        self,
        catalog: CatalogCache,
        counters: Mapping[str, TokenCounter],
        body_limit: int,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._catalog = catalog
        self._counters = counters
        self._body_limit = body_limit
        self._max_depth = max_depth

    async def read(self, request: Request, *, for_counting: bool = False) -> tuple[TranslatedRequest, TokenCounter]:
        body = json_request(await read_body(request.receive, self._body_limit), self._max_depth)
        model, _ = self._catalog.route(body["model"])
        counter = self._counters[model.tokenizer]
        try:
            translated = translate_request(
                body, reasoning=ReasoningSwitch.for_template(counter.template_variables), for_counting=for_counting
            )
        except AnthropicRequestError as exc:
            raise Refusal(400, str(exc), "invalid_request", exc.param) from exc
        return translated, counter


class Messages:
    def __init__(
        self, requests: AnthropicRequests, completions: Completions, accepted_ttls: frozenset[TtlTier]
    ) -> None:
        self._requests = requests
        self._completions = completions
        self._with_24h = TtlTier.ONE_DAY in accepted_ttls

    async def __call__(self, request: Request) -> int:
        arrival = Arrival.now()
        translated, _ = await self._requests.read(request)
        alias: str = translated.body["model"]
        async with self._completions.call(
            request,
            translated.body,
            None,
            arrival,
            client_wants_usage=True,
            marker_param=functools.partial(client_param, translated),
            route="messages",
            diagnostics=translated.diagnostics,
            client_messages=translated.client_messages,
        ) as call:
            if media_type(call.response.headers) == b"text/event-stream" and 200 <= call.response.status < 300:
                await relay_messages_stream(
                    call.exchange,
                    call.response,
                    request.receive,
                    request.send,
                    model=alias,
                    stop_sequences=translated.stop_sequences,
                    with_24h=self._with_24h,
                )
            else:
                await self._relay_json(call.exchange, call.response, request, alias, translated)
        return call.exchange.status

    async def _relay_json(
        self,
        exchange: Exchange,
        response: UpstreamResponse,
        request: Request,
        alias: str,
        translated: TranslatedRequest,
    ) -> None:
        try:
            data = await read_body_or_bill_departure(exchange, response, request.receive)
        except UpstreamBroken as exc:
            exchange.vetoed("upstream_broken")
            exchange.status = 502
            raise Refusal(502, "the upstream response broke off", "upstream_broken", type_="upstream_error") from exc
        if data is None:
            return  # the client left: nobody to answer
        send = request.send
        if not 200 <= response.status < 300:
            exchange.vetoed("non_2xx")
            raise Refusal(response.status, _upstream_error_message(data, response.status), "upstream_error")
        payload = usage_payload(data)
        if payload is None:
            exchange.vetoed("no_usage")
            completion = _json_object(data)
            if completion is None:
                exchange.status = 502
                raise Refusal(502, "the upstream answered with something other than a chat completion", "bad_upstream")
            usage: dict[str, Any] = {}
        else:
            completion, usage = payload, payload["usage"]
            await exchange.apply_usage(usage)
            await exchange.succeeded()  # read-your-writes: entries land before the body is sent (§7.4)
        message = translate_response(
            completion,
            model=alias,
            stop_sequences=translated.stop_sequences,
            usage=final_usage(exchange, with_24h=self._with_24h),
        )
        if exchange.wants_diagnostics:
            message["diagnostics"] = exchange.diagnostics()
        headers = [*JSON_HEADERS, DEGRADED_HEADER] if exchange.degraded else list(JSON_HEADERS)
        headers += exchange.miss_header()
        await exchange.bill()  # billed before the answer is released
        await send_bytes(send, response.status, headers, orjson.dumps(message))


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _upstream_error_message(data: bytes, status: int) -> str:
    """What the upstream said about the client's own request (OpenAI's error shape), bounded; never
    its raw body, which may be anything."""
    payload = _json_object(data)
    error = payload.get("error") if payload is not None else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return f"the upstream refused the request ({status}): {message[:_UPSTREAM_MESSAGE_CHARS]}"
    return f"the upstream answered with status {status}"
