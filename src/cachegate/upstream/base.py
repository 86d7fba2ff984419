"""The upstream port: something that sends an HTTP request to an OpenAI-compatible server.

Like httpx's transports, the thing that moves bytes is an interface: the gateway only sees a
status, headers and an async iterator of body chunks, so tests can plug in an in-process one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from cachegate.core.errors import CachegateError


class UpstreamError(CachegateError):
    """Base of the upstream errors."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached (connection refused, DNS, connect timeout): the client gets 502."""


class UpstreamRefused(UpstreamUnavailable):
    """No connection could be opened (refused, DNS, connect timeout): the request never left, so
    it may be sent to another replica of the model (SPEC §15)."""


class UpstreamBroken(UpstreamError):
    """The upstream's response broke off mid-body (reset, truncated chunk, read timeout)."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


@runtime_checkable
class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]  # lower-case names, hop-by-hop headers removed

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamBroken if it breaks off."""

    async def read(self) -> bytes:
        """The whole body; raises UpstreamBroken if it breaks off."""

    def release(self) -> None:
        """Give the connection back (or drop it, if the body was not read to the end)."""


@runtime_checkable
class Upstream(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the status and headers have arrived."""

    async def aclose(self) -> None: ...


HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)


def check_base_url(url: str) -> str:
    """``url`` if it names an http(s) origin an upstream client can connect to; else ValueError saying why.

    The one rule for an endpoint's base URL, wherever it comes from (the configuration, the admin
    API, the CLI), so that none is stored that would answer 502 on every request: the scheme, the
    port, and the host as the upstream client reads it (a bracketed host is an IPv6 address, a
    name's labels are 1 to 63 characters).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- a port out of range or not a number raises here
        host = parts.hostname
        if not host:
            raise ValueError("no host")
        if parts.netloc.rpartition("@")[2].startswith("["):
            ipaddress.IPv6Address(host)
        else:
            host.encode("idna")
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"must name a host and port an HTTP client can connect to ({exc})") from exc
    return url
