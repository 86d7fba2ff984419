"""A client that leaves before its answer ends (SPEC §11): find out what the upstream produced.

The upstream has done the work the client asked for, so the request is billed for it: the rest
of the upstream's response is read, discarding, for at most the drain deadline, to get the
upstream's own final usage. Past the deadline the read is cancelled and the upstream connection
dropped (``UpstreamResponse.release`` closes a connection whose body was not read to its end),
which is how an engine learns to stop generating; the bill then falls back to cachegate's counts
(``Exchange.client_left``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from cachegate.asgi import Receive
from cachegate.core.sse import SseFramer, SseFrameTooLarge, carries_usage, event_json, is_usage_frame
from cachegate.gateway.exchange import Exchange
from cachegate.upstream.base import UpstreamBroken, UpstreamResponse


async def drain_stream_usage(chunks: AsyncIterator[bytes], framer: SseFramer, seconds: float) -> dict[str, Any] | None:
    """Read the rest of a chat stream, discarding it, for its usage frame; None if none came in time.

    A chunk's usage (engines that put it on every chunk) is kept as the fallback when the stream
    ends without a usage frame.
    """
    latest: dict[str, Any] | None = None
    with contextlib.suppress(TimeoutError, UpstreamBroken, SseFrameTooLarge):
        async with asyncio.timeout(seconds):
            async for chunk in chunks:
                for event in framer.feed(chunk):
                    payload = event_json(event) if b"usage" in event else None
                    if not isinstance(payload, dict) or not carries_usage(payload):
                        continue
                    latest = dict(payload["usage"])
                    if is_usage_frame(payload):
                        return latest
    return latest if _complete(latest) else None


async def read_body_or_bill_departure(exchange: Exchange, response: UpstreamResponse, receive: Receive) -> bytes | None:
    """A JSON answer's whole upstream body; None if the client left first, and was billed for it."""
    outcome = await read_unless_client_leaves(response, receive)
    if isinstance(outcome, bytes):
        return outcome
    await exchange.client_left(await drain_body_usage(outcome, exchange.drain_seconds))
    return None


async def read_unless_client_leaves(response: UpstreamResponse, receive: Receive) -> asyncio.Task[bytes] | bytes:
    """The whole upstream body, or, if the client leaves first, the read still running (to drain)."""
    read = asyncio.ensure_future(response.read())
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((read, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        read.cancel()  # cancelled ourselves (a shutdown past its drain deadline): stop reading too
        raise
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if gone.done() and not gone.cancelled() and gone.exception() is None:
        return read  # the client left (perhaps before the whole body came at once): drain, never answer
    return read.result()  # raises UpstreamBroken as the plain read would


async def drain_body_usage(read: asyncio.Task[bytes], seconds: float) -> dict[str, Any] | None:
    """The usage of a JSON body still being read when the client left, if it arrives in ``seconds``."""
    try:
        data = await asyncio.wait_for(read, seconds)
    except (TimeoutError, UpstreamBroken):
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return usage if isinstance(usage, dict) and _complete(usage) else None


def _complete(usage: dict[str, Any] | None) -> bool:
    return usage is not None and isinstance(usage.get("prompt_tokens"), int)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
