"""One HTTP/1.1 client connection: an asyncio Protocol that parses responses with httptools.

Everything a response needs is kept on the protocol (status, headers, buffered body, one waiter),
so that a keep-alive round trip costs a handful of Python calls: ``exchange()`` writes the request
and waits for the head; the parser's callbacks fill the state and wake the waiter; ``more()`` and
``take()`` hand the body over as it arrives. A connection serves one exchange at a time (no
pipelining) and is reused only after a response that was complete and allowed keep-alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from cachegate.upstream.base import HOP_BY_HOP, UpstreamBroken, UpstreamError, UpstreamUnavailable

HIGH_WATER = 256 * 1024
"""Unread body bytes above which the socket is no longer read: a slow client then holds back the
upstream through TCP flow control instead of making the gateway buffer the whole stream."""

_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class StaleConnection(UpstreamUnavailable):
    """A reused connection ended before any byte of its response: the server closed it while it
    was idle, so it never saw the request, which may be sent again on a new connection."""


class _OutOfStep(Exception):
    """Raised inside a parser callback when bytes follow a complete response (unasked-for data)."""


class Http1Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_buffered",
        "_complete",
        "_error",
        "_exchanges",
        "_framed",
        "_head_only",
        "_headers_done",
        "_in_exchange",
        "_keep_alive",
        "_loop",
        "_on_lost",
        "_parser",
        "_paused",
        "_read_timeout",
        "_received",
        "_transport",
        "_waiter",
        "_waiting_since",
        "_watchdog",
        "headers",
        "status",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        read_timeout: float,
        on_lost: Callable[[Http1Connection], None],
    ) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self._on_lost = on_lost
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._exchanges = 0
        self._in_exchange = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_since = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._paused = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._begin_response(head_only=False)

    def _begin_response(self, *, head_only: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []  # lower-case names, hop-by-hop removed
        self._head_only = head_only
        self._framed = False  # the body's end is given by content-length or chunked encoding, not by EOF
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._received = False  # any byte of this response arrived
        self._error: UpstreamError | None = None

    # --- the caller's side -------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The connection is closed or closing, on our side or the server's."""
        return self._transport is None or self._transport.is_closing()

    @property
    def complete(self) -> bool:
        """The whole response has been received (it may still be partly unread)."""
        return self._complete

    async def exchange(self, request: bytes, *, head_only: bool) -> None:
        """Write ``request`` and return once the response's status and headers have arrived.

        Raises StaleConnection if a reused connection ended before any response byte, and
        UpstreamUnavailable for any other failure before the head; the connection is then closed.
        """
        assert self._transport is not None, "a connection is handed out only once connected"
        self._exchanges += 1
        self._in_exchange = True
        self._begin_response(head_only=head_only)
        self._transport.write(request)
        try:
            while not self._headers_done:
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:
            # Failed or cancelled with the response pending: the connection is out of step for good.
            self.close("the exchange was abandoned")
            raise

    async def more(self) -> bool:
        """Wait for body bytes: True once some are buffered, False when the body has ended.

        Raises UpstreamBroken when the body broke off, after every byte received before was taken.
        """
        while not self._body:
            if self._complete:
                return False
            if self._error is not None:
                raise self._error
            await self._wait()
        return True

    def take(self) -> bytes:
        """Every buffered body byte, as one bytes object (b"" if none); reading resumes if it was paused."""
        body = self._body
        if not body:
            return b""
        chunk = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused:
            self._resume_reading()
        return chunk

    def finish(self) -> bool:
        """End the exchange. True if the connection may serve another request; otherwise it is closed.

        Reuse needs a complete response that allowed keep-alive: an unread rest of a body would
        otherwise be read as the next response.
        """
        self._in_exchange = False
        self._stop_watchdog()
        if self._complete and self._keep_alive and not self.closing:
            self._body.clear()
            self._buffered = 0
            if self._paused:
                self._resume_reading()
            return True
        self.close("the connection was not reusable")
        return False

    def close(self, reason: str) -> None:
        """Close the connection; a reader still waiting for an incomplete response gets an error
        saying ``reason``: UpstreamUnavailable before the head arrived, UpstreamBroken after."""
        if self._error is None and not self._complete:
            self._error = UpstreamBroken(reason) if self._headers_done else UpstreamUnavailable(reason)
        self._stop_watchdog()
        if self._transport is not None:
            if self._complete:
                self._transport.close()
            else:
                self._transport.abort()  # nothing worth flushing; the server sees the exchange end now
        self._wake()

    async def _wait(self) -> None:
        """Wait for the next parser event or the end of the connection, at most ``read_timeout``.

        The timeout is one watchdog timer per exchange, not a timer per wait: a stream waits once
        per chunk, and arming and cancelling a timer (~1.7 µs) would cost more than the wait.
        """
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._waiting_since = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._read_timeout, self._check_idle)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_idle(self) -> None:
        """The watchdog: time out the wait in progress if it has lasted ``read_timeout``, else look again
        when it would have; with no wait in progress, the next wait sets the watchdog again."""
        self._watchdog = None
        if self._waiter is None:
            return
        waited = self._loop.time() - self._waiting_since
        if waited >= self._read_timeout:
            self.close("the upstream sent nothing within the read timeout")
        else:
            self._watchdog = self._loop.call_later(self._read_timeout - waited, self._check_idle)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _resume_reading(self) -> None:
        assert self._transport is not None
        self._paused = False
        self._transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the event loop's side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_exchange:
            # Bytes nobody asked for (an idle connection, or one whose exchange ended): out of step.
            self.close("the upstream sent bytes nobody asked for")
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except _PARSE_ERRORS:
            self.close("malformed response from the upstream")

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self)
        self._stop_watchdog()
        if self._in_exchange and not self._complete and self._error is None:
            if self._headers_done:
                if exc is None and not self._framed:
                    self._complete = True  # a body without a length ends with the connection
                else:
                    self._error = UpstreamBroken("the upstream closed the connection mid-body")
            elif self._received or self._exchanges == 1:
                self._error = UpstreamUnavailable("the upstream closed the connection without answering")
            else:
                self._error = StaleConnection("the upstream had closed the idle connection")
        self._wake()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _OutOfStep

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
                self._framed = True
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (100 Continue, 103 Early Hints): the final one follows
            self.headers = []
            self._framed = False
            return
        self.status = status
        self._headers_done = True
        if self._head_only:
            # A response to HEAD has no body, whatever its headers announce. llhttp cannot be told
            # so: unless it ends the message by itself (a length of 0), finish() closes the connection.
            self._complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            raise _OutOfStep  # body bytes after a response to HEAD
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            assert self._transport is not None
            self._paused = True
            self._transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of an interim response
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()
