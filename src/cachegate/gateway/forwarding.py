"""What a request takes upstream: its headers (SPEC §12: never the client's credentials, the endpoint's
own key) and its body (SPEC §2.4: the client's bytes with the few edits the gateway makes)."""

from __future__ import annotations

from typing import Any, Final

import orjson

from cachegate.asgi import Headers, Scope
from cachegate.core.json_splice import splice
from cachegate.core.telemetry import strip_telemetry_flags
from cachegate.store.base import Endpoint
from cachegate.upstream.base import HOP_BY_HOP

_DROPPED: Final = HOP_BY_HOP | {b"authorization", b"x-api-key", b"cookie", b"x-cachegate-diagnostics"}
"""Never forwarded upstream: the client's own credentials, what the upstream client sets itself, and
the client's request for this gateway's diagnostics (SPEC §14)."""

_NOT_RELAYED: Final = frozenset({b"content-length", b"x-cachegate-cache-miss"})
"""An upstream's response headers never relayed: its length (the body is rewritten), and a miss
header of its own — an upstream cachegate's, of the scope this gateway shares for all its tenants
(SPEC §12, §14)."""


def relayed_headers(headers: Headers) -> Headers:
    """The upstream's response headers as the client gets them (before cachegate adds its own)."""
    return [(k, v) for k, v in headers if k not in _NOT_RELAYED]


def upstream_headers(scope: Scope, endpoint: Endpoint, *, keep_encoding: bool = False) -> Headers:
    """The client's headers as the upstream may see them.

    Unless ``keep_encoding``, the upstream is asked for an uncompressed body: a route that rewrites
    the usage must be able to read it.
    """
    headers = [(k, v) for k, v in scope["headers"] if k not in _DROPPED]
    if not keep_encoding:
        headers = [(k, v) for k, v in headers if k != b"accept-encoding"]
        headers.append((b"accept-encoding", b"identity"))
    if endpoint.api_key:
        headers.append((b"authorization", b"Bearer " + endpoint.api_key.encode("latin-1")))
    return headers


def forwarded_body(
    body: dict[str, Any],
    raw: bytes | None,
    upstream_model: str,
    *,
    force_usage: bool,
    salt: str | None = None,
    markers: int = 0,
) -> bytes:
    """The body for the upstream: ``model`` renamed, the telemetry flags (§12) cut, the principal's
    ``cache_salt`` set when the endpoint is salted, stream usage forced on, and ``markers`` marker
    members (already stripped from ``body``) cut.

    ``body`` is edited in place the same way. ``raw``, the client's bytes, is spliced
    (``core.json_splice``), so what a parse and a fresh serialisation would lose — integers beyond
    64 bits, key order, duplicate keys — survives; without ``raw`` (a translated body), ``body``
    is serialised.
    """
    flags = strip_telemetry_flags(body)
    renamed = body["model"] != upstream_model
    body["model"] = upstream_model
    if salt is not None:
        body["cache_salt"] = salt
    if force_usage:
        options = body.get("stream_options")
        if isinstance(options, dict):
            options["include_usage"] = True
        else:
            body["stream_options"] = {"include_usage": True}
    if raw is None:
        return orjson.dumps(body)
    return splice(
        raw,
        markers,
        upstream_model if renamed else None,
        force_usage,
        removed=flags,
        set_strings={"cache_salt": salt} if salt is not None else None,
    )
