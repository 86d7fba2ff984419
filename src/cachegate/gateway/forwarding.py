"""The headers a request takes upstream (SPEC §12): never the client's credentials, the endpoint's own key."""

from __future__ import annotations

from typing import Final

from cachegate.asgi import Headers, Scope
from cachegate.store.base import Endpoint
from cachegate.upstream.base import HOP_BY_HOP

_DROPPED: Final = HOP_BY_HOP | {b"authorization", b"x-api-key", b"cookie"}
"""Never forwarded upstream: the client's own credentials and what the upstream client sets itself."""


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
