"""The production upstream adapter, on aiohttp's pooled client.

aiohttp rather than httpx: on this kind of machine its pool was an order of magnitude faster
under concurrency (shared/MEASUREMENTS.md), and the upstream client sets the gateway's ceiling.
Bodies are never decompressed here: proxied paths pass bytes through untouched, and the chat
path asks the upstream for an identity encoding so that it can read the usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from cachegate.upstream.base import (
    HOP_BY_HOP,
    UpstreamBroken,
    UpstreamRequest,
    UpstreamUnavailable,
)

_CHUNK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class AiohttpResponse:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = [(name.lower(), value) for name, value in response.raw_headers if name.lower() not in HOP_BY_HOP]

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _CHUNK_ERRORS as exc:
            raise UpstreamBroken(f"upstream body broke off: {exc.__class__.__name__}") from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _CHUNK_ERRORS as exc:
            raise UpstreamBroken(f"upstream body broke off: {exc.__class__.__name__}") from exc

    def release(self) -> None:
        self._response.release()


class AiohttpUpstream:
    """One pooled client for every endpoint; connections are reused per host."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_connections: int = 1000,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so that it binds to the running loop (uvicorn's, not the importer's).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300),
                timeout=self._timeout,
                # One session serves every tenant: a cookie an upstream sets for one request must
                # never ride along on another tenant's request (SPEC §12).
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def send(self, request: UpstreamRequest) -> AiohttpResponse:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers]
        try:
            response = await self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {exc.__class__.__name__}") from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
