"""A lean HTTP/1.1 upstream adapter on httptools, the parser uvicorn's server protocol uses.

Why not aiohttp's client: on the gateway's hot path it cost about eight times the CPU per round
trip, spent in machinery the gateway never uses (cookies, redirects, tracing, multidict headers,
a stream reader per response), and the upstream client bounds the gateway's throughput. This
adapter does only what the Upstream port asks: one write per request, the response parsed in C,
the body handed over as it arrives with TCP back-pressure, keep-alive connections pooled per
origin. Bodies are never decompressed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

from cachegate.upstream._http1 import Http1Connection, StaleConnection
from cachegate.upstream._pool import OriginPool
from cachegate.upstream._request import Target, encode, target
from cachegate.upstream.base import UpstreamRequest


class HttptoolsResponse:
    __slots__ = ("_connection", "_pool", "headers", "status")

    def __init__(self, pool: OriginPool, connection: Http1Connection) -> None:
        self._pool: OriginPool | None = pool
        self._connection = connection
        self.status = connection.status
        self.headers = connection.headers

    def _unreleased(self) -> Http1Connection:
        # A released connection may already carry another request's response: never read it.
        if self._pool is None:
            raise RuntimeError("the response was released")
        return self._connection

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._unreleased()
        while await connection.more():
            yield connection.take()

    async def read(self) -> bytes:
        connection = self._unreleased()
        if connection.complete:  # the usual case: the body came with the head
            return connection.take()
        parts = []
        while await connection.more():
            parts.append(connection.take())
        return b"".join(parts)

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._connection.finish():
            pool.put(self._connection)


class HttptoolsUpstream:
    """Keep-alive HTTP/1.1 connections, pooled per origin, at most ``max_connections_per_origin`` each.

    ``read_timeout`` is the longest wait for the status line and headers, then for each piece of body.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connections_per_origin: int = 256,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections_per_origin
        self._pools: dict[str, OriginPool] = {}
        self._tls: ssl.SSLContext | None = None

    async def send(self, request: UpstreamRequest) -> HttptoolsResponse:
        destination = target(request.method, request.url)
        pool = self._pools.get(destination.origin) or self._open_pool(destination)
        data = encode(destination, request.headers, request.body)
        head_only = request.method == "HEAD"
        connection = await pool.acquire()
        try:
            await connection.exchange(data, head_only=head_only)
        except StaleConnection:
            # The keep-alive race: the server closed the idle connection as the request went out,
            # so it never saw it. Send it once more, after dropping the other idle connections:
            # they have all been idle at least as long (the stack hands out the freshest first).
            pool.drop_idle()
            connection = await pool.acquire()
            await connection.exchange(data, head_only=head_only)
        return HttptoolsResponse(pool, connection)

    def _open_pool(self, destination: Target) -> OriginPool:
        if destination.tls and self._tls is None:
            self._tls = ssl.create_default_context()
        pool = OriginPool(
            host=destination.host,
            port=destination.port,
            tls=self._tls if destination.tls else None,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            limit=self._max_connections,
        )
        self._pools[destination.origin] = pool
        return pool

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
