"""Open the cache index a URL names: the one place that knows every backend."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cachegate.index.base import CacheIndex
from cachegate.index.memory import MemoryIndex
from cachegate.index.postgres import PostgresIndex
from cachegate.index.redis import SCHEMES as REDIS_SCHEMES
from cachegate.index.redis import RedisIndex
from cachegate.index.sqlite import SqliteIndex, sqlite_path_from_url

SUPPORTED_URLS = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, postgresql://...,"
    " redis://..., rediss://..., redis+cluster://... or rediss+cluster://..."
)


async def open_index(url: str, *, retention: float = 0.0, **options: Any) -> CacheIndex:
    """Open the index at ``url``; ``options`` go to the backend's ``open``.

    ``retention`` is how long expired entries and trails are kept for the diagnosis of misses
    (SPEC §14): the sweeper's business on every backend (it deletes what expired that long ago),
    and on Redis also the lifetime its keys keep past their expiry.

    ``sqlite`` takes ``busy_timeout``; ``postgresql``/``postgres`` take ``min_size``, ``max_size``,
    ``connect_timeout`` and ``retries``; ``redis``/``rediss`` and their ``+cluster`` forms take
    ``key_prefix``, ``socket_timeout``, ``connect_timeout``, ``expiry_grace`` and ``max_connections``
    (``key_prefix`` also as a URL query option); ``memory`` takes none. An unknown option is a TypeError
    and an unknown scheme a ValueError; a backend that cannot be reached raises IndexUnavailable.
    """
    # Only the scheme ever goes into a message: the rest of a URL may hold a password.
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        if options:
            raise TypeError(f"the memory index takes no options, got {sorted(options)}")
        return MemoryIndex()
    if scheme == "sqlite":
        return await SqliteIndex.open(sqlite_path_from_url(url), **options)
    if scheme in ("postgresql", "postgres"):
        return await PostgresIndex.open(url, **options)
    if scheme in REDIS_SCHEMES:
        return await RedisIndex.open(url, retention=retention, **options)
    raise ValueError(f"unsupported cache index URL scheme {scheme!r}: use {SUPPORTED_URLS}")
