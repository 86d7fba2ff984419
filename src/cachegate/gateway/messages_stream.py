"""Relaying a chat stream as Anthropic's Messages events (SPEC §9, §7.4).

Every upstream chunk is translated as it arrives (``core.anthropic.stream``), so the first
content byte is never held back. ``message_start`` goes out with the first chunk and carries the
cache split if the classification is already decided then (nearly always: a lookup and a count
take milliseconds, a model's first token more), zeros otherwise; the final ``message_delta``
always carries the exact usage, and Anthropic's clients take the usage from it. New index
entries are committed after the ``message_delta`` and before ``message_stop`` — the same
read-your-writes order as a chat stream's usage frame and ``[DONE]`` — and only if the stream
succeeded and the client is still there.

An upstream stream that breaks off, or reports an error, ends with an ``error`` event: the way
an Anthropic client learns that a stream failed. A client that leaves mid-stream commits nothing
and is billed for what the upstream produced, as on the chat route (``departure``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Final

from cachegate.asgi import Receive, Send
from cachegate.core.anthropic.response import anthropic_usage, message_id
from cachegate.core.anthropic.stream import AnthropicStream
from cachegate.core.diagnosis import PENDING_DIAGNOSTICS
from cachegate.core.relayed import delta_frames
from cachegate.core.sse import (
    SseFramer,
    SseFrameTooLarge,
    carries_usage,
    event_json,
    is_done,
    is_error_frame,
    is_usage_frame,
)
from cachegate.core.types import CacheStats
from cachegate.gateway.departure import drain_stream_usage
from cachegate.gateway.exchange import Exchange
from cachegate.gateway.streaming import watch_disconnect
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse

_HEADERS: Final = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def relay_messages_stream(
    exchange: Exchange,
    response: UpstreamResponse,
    receive: Receive,
    send: Send,
    *,
    model: str,
    stop_sequences: Sequence[str],
    with_24h: bool,
) -> None:
    """Relay a 2xx chat stream to an Anthropic client."""
    headers = _HEADERS + exchange.miss_header()  # only when already known: the headers never wait (SPEC §14)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    relay = _MessagesRelay(exchange, send, AnthropicStream(stop_sequences=stop_sequences), model, with_24h)
    watcher = asyncio.create_task(watch_disconnect(receive, relay.disconnected))
    framer = SseFramer()
    chunks = response.chunks()
    try:
        async for chunk in chunks:
            for event in framer.feed(chunk):
                if is_done(event):
                    break
                await relay.on_event(event)
            if relay.disconnected.is_set() or relay.saw_error:
                break  # stop reading: releasing the unread response drops the upstream connection
    except asyncio.CancelledError:
        # The server cut the stream (a shutdown past its drain deadline): billed as a client that left.
        await exchange.client_left(relay.usage_if_seen())
        raise
    except (UpstreamBroken, SseFrameTooLarge):
        await relay.broke()
    else:
        if relay.disconnected.is_set() and not relay.saw_error:
            usage = relay.usage_if_seen() or await drain_stream_usage(chunks, framer, exchange.drain_seconds)
            await exchange.client_left(usage)
            return
        if not relay.saw_error:  # an error frame already ended the stream with an error event
            await relay.finish()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def final_usage(exchange: Exchange, *, with_24h: bool) -> dict[str, Any]:
    """Anthropic's usage of a finished exchange: the upstream's counts and the split as reported."""
    return anthropic_usage(
        exchange.prompt_tokens,
        exchange.completion_tokens,
        exchange.reported,
        degraded=exchange.degraded,
        with_24h=with_24h,
    )


class _MessagesRelay:
    def __init__(self, exchange: Exchange, send: Send, translator: AnthropicStream, model: str, with_24h: bool) -> None:
        self.exchange = exchange
        self.send = send
        self.translator = translator
        self.model = model
        self.with_24h = with_24h
        self.disconnected = asyncio.Event()
        self.started = False
        self.saw_error = False
        self.usage_seen = False
        self.last_usage: dict[str, Any] | None = None  # the latest per-chunk usage, for a stream without a usage frame

    async def emit(self, *events: bytes) -> None:
        if events:
            await self.send({"type": "http.response.body", "body": b"".join(events), "more_body": True})

    async def on_event(self, event: bytes) -> None:
        payload = event_json(event)
        if not isinstance(payload, dict):
            return  # comments, keep-alives: nothing to translate
        if is_error_frame(payload):
            self.saw_error = True
            error = payload.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            await self.fail("error_frame", message if isinstance(message, str) else "the upstream reported an error")
            return
        await self._start(payload.get("id"))
        if is_usage_frame(payload):
            self.usage_seen = True
            await self.exchange.apply_usage(payload["usage"])
            return
        if carries_usage(payload):
            self.last_usage = dict(payload["usage"])
            self.exchange.apply_usage_if_ready(payload["usage"])
        self.exchange.relayed_tokens += delta_frames(event)
        await self.emit(*self.translator.on_chunk(payload))

    def usage_if_seen(self) -> dict[str, Any] | None:
        """The usage frame's counts if it came before the client left, else None."""
        if not self.usage_seen:
            return None
        return {"prompt_tokens": self.exchange.prompt_tokens, "completion_tokens": self.exchange.completion_tokens}

    async def _start(self, upstream_id: object) -> None:
        if not self.started:
            self.started = True
            extra = None
            if self.exchange.wants_diagnostics:
                decided = self.exchange.ready_classification() is not None
                extra = {"diagnostics": self.exchange.diagnostics() if decided else PENDING_DIAGNOSTICS}
            await self.emit(self.translator.start(message_id(upstream_id), self.model, self._usage_so_far(), extra))

    def _usage_so_far(self) -> dict[str, Any]:
        """``message_start``'s usage: the split if it is decided already, else zeros (the module says why)."""
        classification = self.exchange.ready_classification() if self.exchange.cache_enabled else None
        total = classification.counted_total if classification is not None else None
        if classification is None or total is None:
            return anthropic_usage(0, 0, CacheStats(), with_24h=self.with_24h)
        return anthropic_usage(total, 0, classification.stats, degraded=classification.degraded, with_24h=self.with_24h)

    async def finish(self) -> None:
        """The upstream ended: the final usage, the commit, then ``message_stop`` (the module says why)."""
        if not self.usage_seen and self.last_usage is not None:
            await self.exchange.apply_usage(self.last_usage)
            self.usage_seen = True
        await self._start(None)
        exchange = self.exchange
        # The commit goes between the message_delta and the message_stop.
        extra = {"diagnostics": exchange.diagnostics()} if exchange.wants_diagnostics else None
        *closing, message_stop = self.translator.finish(final_usage(exchange, with_24h=self.with_24h), extra)
        await self.emit(*closing)
        await exchange.stream_ended(
            ok=True, saw_error=False, usage_seen=self.usage_seen, client_gone=self.disconnected.is_set()
        )
        await self.emit(message_stop)

    async def broke(self) -> None:
        """The upstream's stream broke off: billed for what it caused, ended with an ``error`` event."""
        await self._start(None)
        await self.exchange.stream_broke(self.usage_if_seen())
        await self.emit(self.translator.error_event("api_error", "the upstream stream broke off"))

    async def fail(self, reason: str, message: str) -> None:
        """End the stream with an ``error`` event; nothing is committed."""
        await self._start(None)
        self.exchange.vetoed(reason)
        await self.emit(self.translator.error_event("api_error", message))
