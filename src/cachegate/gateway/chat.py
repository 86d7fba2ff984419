"""POST /v1/chat/completions: the OpenAI dialect of the request flow (SPEC §2).

The cache flow itself is ``completions.Completions``; this route reads the client's body, and
splices the usage into whichever response comes back: a JSON body here, an SSE stream in
``streaming``. The classification is awaited only when the usage is needed.
"""

from __future__ import annotations

from typing import Any

import orjson

from cachegate.asgi import Receive, Refusal, Send, header, media_type, read_body, send_bytes
from cachegate.core.telemetry import scrub_telemetry, without_telemetry
from cachegate.gateway.completions import Arrival, Completions, chat_request
from cachegate.gateway.departure import read_body_or_bill_departure
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.forwarding import relayed_headers
from cachegate.gateway.routing import Request
from cachegate.gateway.streaming import relay_stream
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse

DEGRADED_HEADER = (b"x-cachegate-cache", b"degraded")
DIAGNOSTICS_REQUEST_HEADER = b"x-cachegate-diagnostics"


class ChatCompletions:
    def __init__(self, completions: Completions, body_limit: int) -> None:
        self._completions = completions
        self._body_limit = body_limit

    async def __call__(self, request: Request) -> int:
        arrival = Arrival.now()
        raw = await read_body(request.receive, self._body_limit)
        body = chat_request(raw, self._completions.limits)
        client_wants_usage = _asks_for_usage(body)
        async with self._completions.call(
            request,
            body,
            raw,
            arrival,
            client_wants_usage=client_wants_usage,
            automatic_caching=True,
            diagnostics=asks_for_diagnostics(request),
        ) as call:
            if media_type(call.response.headers) == b"text/event-stream":
                await relay_stream(call.exchange, call.response, request.receive, request.send, client_wants_usage)
            else:
                await _relay_json(call.exchange, call.response, request.receive, request.send)
        return call.exchange.status


def asks_for_diagnostics(request: Request) -> bool:
    """An OpenAI client asks for the miss diagnosis in the body with ``x-cachegate-diagnostics: 1`` (SPEC §14)."""
    return header(request.scope, DIAGNOSTICS_REQUEST_HEADER) in (b"1", b"true")


def _asks_for_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return body.get("stream") is True and isinstance(options, dict) and options.get("include_usage") is True


async def _relay_json(exchange: Exchange, response: UpstreamResponse, receive: Receive, send: Send) -> None:
    try:
        data = await read_body_or_bill_departure(exchange, response, receive)
    except UpstreamBroken as exc:
        exchange.vetoed("upstream_broken")
        exchange.status = 502
        raise Refusal(502, "the upstream response broke off", "upstream_broken", type_="upstream_error") from exc
    if data is None:
        return  # the client left: nobody to answer
    headers = relayed_headers(response.headers)
    ok = 200 <= response.status < 300
    kind = media_type(response.headers)
    payload = usage_payload(data) if ok and kind in (None, b"application/json") else None
    if payload is None:
        exchange.vetoed("non_2xx" if not ok else "no_usage")
        await exchange.bill()  # billed before the answer is released
        await send_bytes(send, response.status, headers, without_telemetry(data))
        return
    scrub_telemetry(payload)
    await exchange.apply_usage(payload["usage"])
    await exchange.succeeded()  # read-your-writes: entries land before the body is sent (§7.4)
    if exchange.degraded:
        headers.append(DEGRADED_HEADER)
    headers += exchange.miss_header()
    if exchange.wants_diagnostics:
        payload["diagnostics"] = exchange.diagnostics()
    await exchange.bill()  # billed before the answer is released
    await send_bytes(send, response.status, headers, orjson.dumps(payload))


def usage_payload(data: bytes) -> dict[str, Any] | None:
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
