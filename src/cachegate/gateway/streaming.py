"""Relaying an SSE chat stream (SPEC §7.4, §8).

Headers and every frame before the usage frame go to the client as they arrive, byte for byte;
only the usage frame waits for the classification and is rewritten. What one upstream read
brought goes out in one ``send`` (a busy upstream's reads hold many frames; a send per frame
would cost the server a write each), flushed before anything that may wait. New index entries are
committed after the usage frame and before ``[DONE]`` (read-your-writes), and only if the stream
succeeded: 2xx, no error frame, no transport error, and the client still there.

A broken upstream stream is passed on as a broken stream: the response ends without its final
chunk, so the client's HTTP library reports the truncation instead of a clean end.

A client that leaves mid-stream commits nothing and is billed for what the upstream produced
(``departure``): the rest of the stream is read for its usage within the drain deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cachegate.asgi import Receive, Send
from cachegate.core.relayed import delta_frames
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
from cachegate.core.telemetry import scrub_telemetry
from cachegate.gateway.departure import drain_stream_usage
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.forwarding import relayed_headers
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse


async def relay_stream(
    exchange: Exchange, response: UpstreamResponse, receive: Receive, send: Send, client_wants_usage: bool
) -> None:
    headers = relayed_headers(response.headers)
    headers += exchange.miss_header()  # only when already known: the headers never wait (SPEC §14)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    relay = _Relay(exchange, send, ok=200 <= response.status < 300, client_wants_usage=client_wants_usage)
    watcher = asyncio.create_task(watch_disconnect(receive, relay.disconnected))
    framer = SseFramer()
    chunks = response.chunks()
    try:
        async for chunk in chunks:
            plain, events = framer.split(chunk)
            if plain:  # the hot path: content frames pass untouched, as they came
                relay.forward(plain)
            for event in events:
                await relay.on_event(event)
            await relay.flush()
            if relay.disconnected.is_set():
                break  # to the drain below; the relay sends nothing more
        else:
            tail = framer.flush()
            if tail:
                await relay.on_event(tail)
                await relay.flush()
    except asyncio.CancelledError:
        # The server cut the stream (a shutdown past its drain deadline): billed as a client that left.
        await exchange.client_left(relay.usage_if_seen())
        raise
    except (UpstreamBroken, SseFrameTooLarge):
        # An event over the framer's limit cannot be relayed faithfully either: a broken stream.
        await relay.flush()  # what came whole before the break is the client's
        await exchange.stream_broke(relay.usage_if_seen())
        return  # leave the response incomplete: the server drops the connection mid-body
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not relay.finished:
        if relay.disconnected.is_set():
            usage = relay.usage_if_seen() or await drain_stream_usage(chunks, framer, exchange.drain_seconds)
            await exchange.client_left(usage)
            return  # releasing the unread rest of the response drops the upstream connection
        await relay.finish()  # the upstream ended cleanly without [DONE]
        await relay.flush()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Relay:
    """What one stream has shown so far, and what each event does to it."""

    def __init__(self, exchange: Exchange, send: Send, *, ok: bool, client_wants_usage: bool) -> None:
        self.exchange = exchange
        self.send = send
        self.ok = ok
        self.client_wants_usage = client_wants_usage
        self.disconnected = asyncio.Event()
        self.saw_error = False
        self.usage_frame_seen = False
        self.last_usage: dict[str, Any] | None = None  # the latest per-chunk usage, for a missing usage frame
        self.last_chunk: dict[str, Any] | None = None  # its id/model/created, to dress that frame
        self.crlf = False
        self.finished = False
        self._out: list[bytes] = []  # frames to send, in order, at the next flush

    def forward(self, event: bytes) -> None:
        self.exchange.relayed_tokens += delta_frames(event)
        self._out.append(event)

    async def flush(self) -> None:
        """Send what was forwarded since the last flush, in one body message."""
        if self._out:
            body = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def on_event(self, event: bytes) -> None:
        if is_done(event):
            await self.finish()
            self.forward(event)
            return
        if not may_carry_usage_or_error(event):
            self.forward(event)
            return
        payload = event_json(event)
        if not isinstance(payload, dict):
            self.forward(event)
            return
        self.crlf = b"\r\n" in event
        if scrub_telemetry(payload):  # engine telemetry never reaches a client (SPEC §12)
            event = replace_event_json(event, payload)
        if is_error_frame(payload):
            self.saw_error = True
            self.forward(event)
        elif is_usage_frame(payload):
            self.usage_frame_seen = True
            if self.exchange.cache_enabled and self.exchange.ready_classification() is None:
                await self.flush()  # the frames before it are not held while the classification finishes
            await self.exchange.apply_usage(payload["usage"])
            self._add_diagnostics(payload)
            if self.client_wants_usage:
                self.forward(replace_event_json(event, payload))
        elif carries_usage(payload):
            self.last_usage = dict(payload["usage"])
            self.last_chunk = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
            self.exchange.apply_usage_if_ready(payload["usage"])
            self.forward(replace_event_json(event, payload))
        else:
            self.forward(event)

    def _add_diagnostics(self, frame: dict[str, Any]) -> None:
        """The usage frame carries the miss diagnosis to a client that asked (SPEC §14)."""
        if self.exchange.wants_diagnostics:
            frame["diagnostics"] = self.exchange.diagnostics()

    def usage_if_seen(self) -> dict[str, Any] | None:
        """The usage the relay has seen already (its usage frame came before the client left), if any."""
        if not self.usage_frame_seen:
            return None
        return {"prompt_tokens": self.exchange.prompt_tokens, "completion_tokens": self.exchange.completion_tokens}

    async def finish(self) -> None:
        """End-of-stream work, before ``[DONE]``: a usage frame if the upstream sent none, then the commit."""
        self.finished = True
        if not self.usage_frame_seen and self.last_usage is not None and self.ok and not self.saw_error:
            frame = {**(self.last_chunk or {}), "choices": [], "usage": dict(self.last_usage)}
            await self.exchange.apply_usage(frame["usage"])
            self._add_diagnostics(frame)
            self.usage_frame_seen = True
            if self.client_wants_usage:
                self.forward(data_event(frame, crlf=self.crlf))
        await self.exchange.stream_ended(
            ok=self.ok,
            saw_error=self.saw_error,
            usage_seen=self.usage_frame_seen,
            client_gone=self.disconnected.is_set(),
        )


async def watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    """Set ``disconnected`` when the client leaves; run beside a stream's relay."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return
