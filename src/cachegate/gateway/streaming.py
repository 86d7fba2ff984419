"""Relaying an SSE chat stream (SPEC §7.4, §8).

Headers and every frame before the usage frame go to the client as they arrive, byte for byte;
only the usage frame waits for the classification and is rewritten. New index entries are
committed after the usage frame and before ``[DONE]`` (read-your-writes), and only if the stream
succeeded: 2xx, no error frame, no transport error, and the client still there.

A broken upstream stream is passed on as a broken stream: the response ends without its final
chunk, so the client's HTTP library reports the truncation instead of a clean end.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cachegate.core.sse import (
    SseFramer,
    SseFrameTooLarge,
    carries_usage,
    data_event,
    event_json,
    is_done,
    is_error_frame,
    is_usage_frame,
    may_carry_usage_or_error,
    replace_event_json,
)
from cachegate.gateway.asgi import Receive, Send
from cachegate.gateway.exchange import Exchange
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse


class _StreamState:
    __slots__ = ("crlf", "finished", "last_chunk", "last_usage", "saw_error", "usage_frame_seen")

    def __init__(self) -> None:
        self.saw_error = False
        self.usage_frame_seen = False
        self.last_usage: dict[str, Any] | None = None
        self.last_chunk: dict[str, Any] | None = None
        self.crlf = False
        self.finished = False


async def relay_stream(
    exchange: Exchange, response: UpstreamResponse, receive: Receive, send: Send, client_wants_usage: bool
) -> None:
    headers = [(k, v) for k, v in response.headers if k != b"content-length"]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    disconnected = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
    ok = 200 <= response.status < 300
    state = _StreamState()

    async def forward(event: bytes) -> None:
        await send({"type": "http.response.body", "body": event, "more_body": True})

    async def finish() -> None:
        """End-of-stream work, before ``[DONE]``: a usage frame if the upstream sent none, then the commit."""
        state.finished = True
        if not state.usage_frame_seen and state.last_usage is not None and ok and not state.saw_error:
            frame = {**(state.last_chunk or {}), "choices": [], "usage": dict(state.last_usage)}
            await exchange.apply_usage(frame["usage"])
            state.usage_frame_seen = True
            if client_wants_usage:
                await forward(data_event(frame, crlf=state.crlf))
        if not ok:
            exchange.vetoed("non_2xx")
        elif state.saw_error:
            exchange.vetoed("error_frame")
        elif not state.usage_frame_seen:
            exchange.vetoed("no_usage")
        elif disconnected.is_set():
            exchange.vetoed("client_disconnected")
        else:
            await exchange.succeeded()

    async def on_event(event: bytes) -> None:
        if is_done(event):
            await finish()
            await forward(event)
            return
        if not may_carry_usage_or_error(event):
            await forward(event)  # the hot path: content frames pass untouched
            return
        payload = event_json(event)
        if not isinstance(payload, dict):
            await forward(event)
            return
        state.crlf = b"\r\n" in event
        if is_error_frame(payload):
            state.saw_error = True
            await forward(event)
        elif is_usage_frame(payload):
            state.usage_frame_seen = True
            await exchange.apply_usage(payload["usage"])
            if client_wants_usage:
                await forward(replace_event_json(event, payload))
        elif carries_usage(payload):
            state.last_usage = dict(payload["usage"])
            state.last_chunk = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
            exchange.apply_usage_if_ready(payload["usage"])
            await forward(replace_event_json(event, payload))
        else:
            await forward(event)

    framer = SseFramer()
    broken = False
    try:
        async for chunk in response.chunks():
            for event in framer.feed(chunk):
                await on_event(event)
            if disconnected.is_set():
                break  # stop reading: releasing the unread response drops the upstream connection
        else:
            tail = framer.flush()
            if tail:
                await on_event(tail)
    except (UpstreamBroken, SseFrameTooLarge):
        # An event over the framer's limit cannot be relayed faithfully: treated as a broken stream.
        broken = True
        state.saw_error = True
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if disconnected.is_set():
        exchange.vetoed("client_disconnected")
        return
    if broken:
        exchange.vetoed("upstream_broken")
        return  # leave the response incomplete: the server drops the connection mid-body
    if not state.finished:
        await finish()  # the upstream ended cleanly without [DONE]
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return
