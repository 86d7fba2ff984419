"""Small HTTP/1.1 servers on raw asyncio streams, scripted per test, for the upstream adapters' edge cases.

A real server (aiohttp's, behind the fake upstream) cannot be told to cut a body at a byte, stall
between headers and body, or close an idle connection on cue; these can. Each connection is
served by the test's own ``handler(reader, writer)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as sent, names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection (its body by content-length), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _version = request_line.split(" ")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    length = next((int(value) for name, value in headers if name == "content-length"), 0)
    return Request(method, target, headers, await reader.readexactly(length))


def response(
    status: int = 200, body: bytes = b"", headers: tuple[tuple[str, str], ...] = (), *, length: bool = True
) -> bytes:
    """A response head followed by ``body``; ``length=False`` leaves the framing to ``headers`` (or to EOF)."""
    if length:
        headers = (*headers, ("Content-Length", str(len(body))))
    lines = [f"HTTP/1.1 {status} X", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body; ``chunk(b"")`` ends the body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class RawServer:
    """A server on 127.0.0.1 whose connections are served by ``handler``; it counts what it accepted."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.open_connections = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/") -> str:
        assert self._server is not None
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: part of several tests
        except asyncio.CancelledError:
            pass  # the server is shutting down; ending normally keeps Python 3.11's stream callback quiet
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open_connections -= 1
            self._tasks.discard(task)


def answer_each(answer: Callable[[Request], bytes]) -> Handler:
    """A keep-alive handler: every request on the connection gets ``answer(request)``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(answer(request))
            await writer.drain()

    return handler


GIVE_UP_AFTER = 5.0
"""Seconds a test waits for something that must happen before failing; never a statement about speed."""


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds; raise AssertionError if it still does not after GIVE_UP_AFTER."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + GIVE_UP_AFTER
    while not condition():
        if loop.time() > give_up:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.005)


async def until_still(value: Callable[[], int]) -> int:
    """``value()`` once it has not changed for 100 ms and 20 turns of the event loop in a row."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + GIVE_UP_AFTER
    last, since, turns = value(), loop.time(), 0
    while turns < 20 or loop.time() - since < 0.1:
        await asyncio.sleep(0.005)
        turns += 1
        if value() != last:
            last, since, turns = value(), loop.time(), 0
        if loop.time() > give_up:
            raise AssertionError("the value did not settle in time")
    return last


BLAST = 10 * 1024 * 1024


class Blaster:
    """A handler that answers with a 10 MiB body as fast as the client takes it, counting what it got out."""

    def __init__(self) -> None:
        self.sent = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A small send buffer, so that the bytes in flight are mostly the client's.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        await read_request(reader)
        writer.write(response(200, headers=(("Content-Length", str(BLAST)),), length=False))
        piece = b"x" * (64 * 1024)
        while self.sent < BLAST:
            writer.write(piece)
            await writer.drain()  # blocks while the client does not read
            self.sent += len(piece)
        await reader.read()
