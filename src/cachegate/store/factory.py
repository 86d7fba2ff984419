"""Open the control store named by a URL from the configuration."""

from __future__ import annotations

from cachegate.store.base import ControlStore
from cachegate.store.postgres import PostgresStore
from cachegate.store.sqlite import SqliteStore

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


async def open_store(url: str) -> ControlStore:
    """Open ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``postgresql://…``.

    The schema is not migrated here; call ``migrate()`` on the result.
    """
    if url.startswith(_SQLITE_PREFIX) and len(url) > len(_SQLITE_PREFIX):
        return await SqliteStore.open(url[len(_SQLITE_PREFIX) :])
    if url.startswith(_POSTGRES_SCHEMES):
        return await PostgresStore.open(url)
    # Only the scheme is quoted back: the rest of a URL may hold a password.
    scheme = url.partition("://")[0] + "://" if "://" in url else "no scheme"
    raise ValueError(
        f"unsupported control store URL ({scheme}): expected sqlite:///relative/path,"
        " sqlite:////absolute/path or postgresql://user@host/database"
    )
