"""The keep-alive connections to one origin (scheme, host, port).

Idle connections sit on a stack and the most recently used one goes out first: it is the least
likely to have been closed by the server's idle timeout, and the ones under it age out unused.
At most ``limit`` connections are open or opening. A request over the limit waits in line, and a
released connection goes straight to the first one waiting, so that newcomers cannot overtake it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from cachegate.upstream._http1 import Http1Connection
from cachegate.upstream.base import UpstreamRefused, UpstreamUnavailable

_CONNECT_ERRORS = (OSError, TimeoutError, UnicodeError)  # refused, reset, DNS, TLS, timeout, bad host name


class OriginPool:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        limit: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._idle: list[Http1Connection] = []
        self._connections: set[Http1Connection] = set()  # open or opening: each holds one of the `limit` slots
        # A waiter gets a connection, or None: "a slot was freed (or the pool closed), look again".
        self._waiters: deque[asyncio.Future[Http1Connection | None]] = deque()
        self._closed = False

    async def acquire(self) -> Http1Connection:
        """A connection ready for an exchange: an idle one, a new one, or the next one released."""
        while True:
            if self._closed:
                raise UpstreamUnavailable("the upstream client is closed")
            idle = self._idle
            while idle:
                connection = idle.pop()
                if not connection.closing:  # closed by the server, its connection_lost not yet run
                    return connection
            if len(self._connections) < self._limit:
                return await self._connect()
            handed = await self._wait_in_line()
            if handed is not None and not handed.closing:
                return handed

    def put(self, connection: Http1Connection) -> None:
        """Take back a connection whose exchange ended cleanly: to the first in line, else onto the stack."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def drop_idle(self) -> None:
        """Close every idle connection: one was found closed by the server, and all the others
        have been idle at least as long."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close("dropped as stale")

    def close(self) -> None:
        """Close every connection, idle or in use; exchanges in progress fail, new ones are refused."""
        self._closed = True
        self._idle.clear()
        for connection in list(self._connections):
            connection.close("the upstream client was closed")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _connect(self) -> Http1Connection:
        connection = Http1Connection(self._loop, self._read_timeout, self._forget)
        self._connections.add(connection)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._loop.create_connection(lambda: connection, self._host, self._port, ssl=self._tls)
        except _CONNECT_ERRORS as exc:
            self._forget(connection)
            raise UpstreamRefused(f"cannot connect to the upstream: {exc.__class__.__name__}") from exc
        except BaseException:
            self._forget(connection)
            raise
        if self._closed:
            connection.close("the upstream client was closed")
            raise UpstreamUnavailable("the upstream client is closed")
        if connection.closing:  # the server closed it at once; connection_lost frees its slot
            raise UpstreamRefused("the upstream closed the connection as it opened")
        return connection

    def _forget(self, connection: Http1Connection) -> None:
        """Free the slot of a connection that is gone (lost, or never opened); idempotent."""
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._pass_turn()

    async def _wait_in_line(self) -> Http1Connection | None:
        waiter: asyncio.Future[Http1Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed something just as we were cancelled: pass it on to the next in line.
                handed = waiter.result()
                if handed is None:
                    self._pass_turn()
                else:
                    self.put(handed)
            raise

    def _pass_turn(self) -> None:
        """Tell the first one in line that a slot is free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
