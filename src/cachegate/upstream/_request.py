"""An HTTP/1.1 request as bytes: where it goes (parsed once per method and URL) and what it says.

The gateway sends to a handful of URLs, so everything that depends only on the method and the
URL — the origin, the request line, the host header — is worked out once and cached; a request
then costs one pass over its headers and one join.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, urlsplit

from cachegate.upstream.base import HOP_BY_HOP, UpstreamUnavailable, check_base_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 pchar (and "/" between segments); "%" is kept so that an escaped URL stays as it is.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
# Methods whose requests carry no body unless given one: no "content-length: 0" for them.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE"})


@dataclass(frozen=True, slots=True)
class Target:
    origin: str  # scheme://host[:port], the key of the connection pool
    host: str
    port: int
    tls: bool
    head: bytes  # the request line and the host header line
    length_when_empty: bool  # an empty body is still announced, with "content-length: 0"


@lru_cache(maxsize=1024)
def target(method: str, url: str) -> Target:
    """Raises ValueError for a method that is not an HTTP token, UpstreamUnavailable for a URL
    that names no http(s) origin (the gateway answers 502 for an endpoint it cannot reach)."""
    if not _METHOD.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    try:
        return _parse(method, url)
    except ValueError as exc:  # a bad port, host name or escape, from urlsplit or the idna codec
        raise UpstreamUnavailable(f"invalid upstream URL: {exc}") from exc


def _parse(method: str, url: str) -> Target:
    parts = urlsplit(check_base_url(url))  # the rule every stored base URL passed
    port = parts.port
    default_port = _DEFAULT_PORTS[parts.scheme]
    host = parts.hostname
    assert host is not None  # check_base_url refuses a URL without one
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != default_port:
        authority = f"{authority}:{port}"
    request_target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        request_target = f"{request_target}?{quote(parts.query, safe=_QUERY_SAFE)}"
    return Target(
        origin=f"{parts.scheme}://{authority}",
        host=host,
        port=port or default_port,
        tls=parts.scheme == "https",
        head=f"{method} {request_target} HTTP/1.1\r\nhost: ".encode("ascii") + authority.encode("idna") + b"\r\n",
        length_when_empty=method not in _BODYLESS_METHODS,
    )


def encode(target: Target, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The whole request, ready for one write. The framing headers (host, content-length,
    connection, …) are this module's: the caller's are dropped."""
    fields: list[bytes] = []
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            fields += (name, b": ", value, b"\r\n")
    block = b"".join(fields)
    # One CR LF per header line, the one added here: any other CR or LF would smuggle in a header.
    if block.count(b"\n") * 4 != len(fields) or block.count(b"\r") * 4 != len(fields):
        raise ValueError("a request header contains a CR or LF character")
    length = b"content-length: %d\r\n\r\n" % len(body) if body or target.length_when_empty else b"\r\n"
    return b"".join((target.head, block, length, body))
