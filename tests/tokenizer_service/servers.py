"""An ASGI app on a loopback port, served by uvicorn from a background event loop.

Tests reach it over real HTTP, as gateways do, from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import uvicorn
import uvloop

from cachegate.asgi import ASGIApp

SERVICE_BODY_LIMIT = 64 * 1024
"""The body limit of the tests' tokenizer service: small, so a body over it is cheap to send."""

T = TypeVar("T")


class BackgroundServer:
    """``app`` under uvicorn on 127.0.0.1 (``port``, or a free one), in a thread with its own event loop."""

    def __init__(self, app: ASGIApp, lifespan: Literal["on", "off"] = "on", port: int = 0) -> None:
        self._app = app
        self._port = port
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="background-server", daemon=True)
        self._server = uvicorn.Server(
            uvicorn.Config(self._app, loop="none", http="httptools", lifespan=lifespan, log_level="warning")
        )
        self._serving: asyncio.Task[None] | None = None
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
            await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        self._server.should_exit = True
        if self._serving is not None:
            await self._serving
