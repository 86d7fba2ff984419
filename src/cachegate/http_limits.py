"""Limits on what a client may send before the gateway sees a request: header bytes and time.

uvicorn has neither for httptools: ``h11_max_incomplete_event_size`` applies to its h11 protocol
only, and its keep-alive timeout is armed only between requests, so a client that opens a
connection and sends a request a byte at a time (slowloris) holds it forever. This protocol is
uvicorn's httptools protocol with the two limits added, at the parser's own callbacks:

- the request line and headers together may hold ``max_header_bytes``; past it the client gets
  431 and the connection is closed, before the application is called;
- a whole request (headers and body) must arrive within ``receive_seconds`` of its first byte
  (or of the connection, for the first request); a client still sending its headers then gets
  408, one sending its body is disconnected (the route sees the client leave).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cachegate.core.errors import openai_error

log = logging.getLogger(__name__)

_REASONS: Final = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, max_header_bytes: int, receive_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_header_bytes = max_header_bytes
        self._receive_seconds = receive_seconds
        self._header_bytes = 0
        self._in_headers = True
        self._refused = False
        self._receive_timer: asyncio.TimerHandle | None = None

    # -- the timer: armed from a request's first byte (or the connection) to its last --------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._receive_timer is None:
            self._receive_timer = self.loop.call_later(self._receive_seconds, self._receive_timed_out)

    def _disarm(self) -> None:
        if self._receive_timer is not None:
            self._receive_timer.cancel()
            self._receive_timer = None

    def _receive_timed_out(self) -> None:
        self._receive_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            log.info("a client took more than %s s to send its request headers; cut", self._receive_seconds)
            self._refuse(408, "the request was not received in time")
        else:
            log.info("a client took more than %s s to send its request body; cut", self._receive_seconds)
            self.transport.close()  # the application is running: it sees the client leave

    # -- parser callbacks ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._in_headers = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_headers = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parse error after a refusal: the refusal has been sent
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._max_header_bytes and not self._refused:
            self._refuse(431, f"the request line and headers are larger than {self._max_header_bytes} bytes")

    def _refuse(self, status: int, message: str) -> None:
        """Answer in OpenAI's error shape and close: nothing more is read from this connection."""
        self._refused = True
        self._disarm()
        body = openai_error(message, "invalid_request_error", "request_too_large" if status == 431 else "timeout")
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def limited_protocol(max_header_bytes: int, receive_seconds: float) -> Any:
    """The protocol class for ``uvicorn.Config(http=…)``: uvicorn calls it with its own arguments."""
    return functools.partial(
        LimitedHttpToolsProtocol, max_header_bytes=max_header_bytes, receive_seconds=receive_seconds
    )
