"""The embedded cache index: one SQLite file, the default when nothing else is configured.

Writes, refreshes and sweeps run on one SqliteWorker (``cachegate.sql.sqlite``, the control
store's too): a dedicated thread that owns the writing connection and runs them in call order;
that serializes the process's writers, so SQLite's single-writer lock is only contended by other
processes sharing the file. The schema is the steps of ``cachegate/index/migrations``, applied as
the file is opened (``cachegate.index.schema``).

Lookups, the one operation on every request's path, run on the calling (event-loop) thread through
a second, read-only connection. In WAL mode a reader never waits for a writer, and an indexed
lookup of at most 80 keys costs a few tens of microseconds — less than the hop to a worker thread
and back, and without the GIL contention that hop adds under load. Its busy timeout is kept short
so that the rare wait (another process recovering the WAL) degrades the request instead of
stalling the loop. A private ``:memory:`` database has no second connection and is read on the
worker thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.schema import SCHEMA
from cachegate.sql.migrations import SchemaTooNew, migrate_sqlite
from cachegate.sql.sqlite import SqliteWorker, connect, transaction

_T = TypeVar("_T")

# The statements are this adapter's own, not rendered from PostgreSQL's (cachegate.sql.dialect): the two
# share the schema but not the plans. Here a batch is plain statements in one transaction and a lookup
# an IN list; PostgreSQL's are single statements over arrays, lateral primary-key probes and
# SKIP LOCKED sweeps, for many replicas on one server.
_LOOKUP = """
SELECT prefix_hash, cumulative_tokens, ttl, expires_at FROM cache_index_entries
WHERE principal = ? AND model = ? AND tokenizer_version = ? AND expires_at > ?
  AND prefix_hash IN ({placeholders})
"""

# In DO UPDATE, bare column names are the stored row and every SET expression sees its old values.
_WRITE = """
INSERT INTO cache_index_entries
    (principal, model, tokenizer_version, prefix_hash, cumulative_tokens, ttl, expires_at)
VALUES (:principal, :model, :tokenizer_version, :prefix_hash, :cumulative_tokens, :ttl, :expires_at)
ON CONFLICT (principal, model, tokenizer_version, prefix_hash) DO UPDATE SET
    cumulative_tokens = excluded.cumulative_tokens,
    ttl = CASE WHEN expires_at > excluded.expires_at THEN ttl ELSE excluded.ttl END,
    expires_at = max(expires_at, excluded.expires_at)
"""

_REFRESH = """
UPDATE cache_index_entries SET expires_at = :expires_at
WHERE principal = :principal AND model = :model AND tokenizer_version = :tokenizer_version
  AND prefix_hash = :prefix_hash AND expires_at > :now AND expires_at < :expires_at
"""

_WRITE_TRAIL = """
INSERT INTO cache_index_trails (principal, model, tokenizer_version, key, anchor, sections, expires_at)
VALUES (:principal, :model, :tokenizer_version, :key, :anchor, :sections, :expires_at)
ON CONFLICT (principal, model, tokenizer_version, key) DO UPDATE SET
    anchor = excluded.anchor,
    sections = excluded.sections,
    expires_at = max(expires_at, excluded.expires_at)
"""

_RECALL_EXPIRED = """
SELECT prefix_hash FROM cache_index_entries
WHERE principal = ? AND model = ? AND tokenizer_version = ? AND expires_at <= ?
  AND prefix_hash IN ({placeholders})
"""

_RECALL_TRAILS = """
SELECT key, anchor, sections, expires_at FROM cache_index_trails
WHERE principal = ? AND model = ? AND tokenizer_version = ? AND key IN ({placeholders})
"""

_SWEEP = "DELETE FROM cache_index_entries WHERE expires_at <= ?"
_SWEEP_TRAILS = "DELETE FROM cache_index_trails WHERE expires_at <= ?"

# Far below SQLite's host-parameter limit (32766 since 3.32), and a lookup asks for at most
# 4 breakpoints x 20 candidates anyway; larger requests are split within the same worker call.
_LOOKUP_CHUNK = 500


def sqlite_path_from_url(url: str) -> str:
    """The database path of a ``sqlite:///...`` URL.

    Three slashes then a relative path (``sqlite:///data/index.db``, relative to the working
    directory), four for an absolute one (``sqlite:////var/lib/cachegate/index.db``), and
    ``sqlite:///:memory:`` for a private in-memory database. Percent-escapes are decoded.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL (scheme {parts.scheme!r})")
    if parts.netloc or parts.query or parts.fragment:
        raise ValueError("a sqlite URL has the form sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = unquote(parts.path.removeprefix("/"))
    if not path:
        raise ValueError("the sqlite URL names no database file: use sqlite:///path/to/index.db")
    return path


class SqliteIndex:
    """A ``CacheIndex`` in one SQLite file, shared by the processes that open the same file."""

    def __init__(self, worker: SqliteWorker, reader: sqlite3.Connection | None) -> None:
        """Use ``SqliteIndex.open``."""
        self._worker = worker
        self._reader = reader
        self._closed = False

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float = 5.0) -> SqliteIndex:
        """Open (creating if needed) the index file at ``path``, its schema migrated.

        ``busy_timeout`` (seconds) is how long a statement waits for another process's write lock
        before failing, which then surfaces as ``IndexUnavailable``.
        """

        def writer() -> sqlite3.Connection:
            return connect(
                path,
                timeout=busy_timeout,
                pragmas=("journal_mode = WAL", "synchronous = NORMAL"),
                setup=lambda connection: migrate_sqlite(connection, SCHEMA),
            )

        def cannot_open(exc: sqlite3.Error) -> IndexUnavailable:
            return IndexUnavailable(f"cannot open the SQLite cache index {path!r}: {exc}")

        worker = SqliteWorker(writer, thread_name="cachegate-index-sqlite", errors=_unavailable)
        try:
            await worker.open(errors=cannot_open)
        except SchemaTooNew as exc:
            raise IndexUnavailable(f"the SQLite cache index {path!r} is unusable: {exc}") from exc
        reader = None
        if path != ":memory:":
            try:
                # The file and its schema exist already; only WAL recovery by another process takes
                # a lock a lookup would wait for.
                reader = connect(path, timeout=_READER_BUSY_TIMEOUT, pragmas=("query_only = ON",))
            except sqlite3.Error as exc:
                await worker.aclose(wait=False)
                raise cannot_open(exc) from exc
        return cls(worker, reader)

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        if not hashes:
            return []
        unique = list(dict.fromkeys(hashes))
        if self._reader is None:
            return await self._run(_lookup, scope, unique, now)
        if self._closed:
            raise IndexUnavailable("the SQLite cache index is closed")
        try:
            return _lookup(self._reader, scope, unique, now)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        if not entries and not trails:
            return
        rows = [
            {
                "principal": entry.scope.principal,
                "model": entry.scope.model,
                "tokenizer_version": entry.scope.tokenizer_version,
                "prefix_hash": entry.prefix_hash,
                "cumulative_tokens": entry.cumulative_tokens,
                "ttl": entry.ttl.value,
                "expires_at": entry.expires_at,
            }
            for entry in entries
        ]
        trail_rows = [
            {
                "principal": trail.scope.principal,
                "model": trail.scope.model,
                "tokenizer_version": trail.scope.tokenizer_version,
                "key": trail.key,
                "anchor": trail.anchor,
                "sections": trail.sections,
                "expires_at": trail.expires_at,
            }
            for trail in trails
        ]
        await self._run(_write, rows, trail_rows)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        if not refreshes:
            return
        rows = [
            {
                "principal": refresh.scope.principal,
                "model": refresh.scope.model,
                "tokenizer_version": refresh.scope.tokenizer_version,
                "prefix_hash": refresh.prefix_hash,
                "expires_at": refresh.expires_at,
                "now": now,
            }
            for refresh in refreshes
        ]
        await self._run(_execute_many, _REFRESH, rows)

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        unique_hashes, unique_keys = list(dict.fromkeys(hashes)), list(dict.fromkeys(keys))
        if self._reader is None:
            return await self._run(_recall, scope, unique_hashes, unique_keys, now)
        if self._closed:
            raise IndexUnavailable("the SQLite cache index is closed")
        try:
            return _recall(self._reader, scope, unique_hashes, unique_keys, now)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def sweep(self, now: float) -> int:
        return await self._run(_sweep, now)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.close()
        await self._worker.aclose(wait=False)

    async def _run(self, operation: Callable[..., _T], *args: object) -> _T:
        """Run ``operation(connection, *args)`` on the worker thread, errors as ``IndexUnavailable``."""
        if self._closed:
            raise IndexUnavailable("the SQLite cache index is closed")
        return await self._worker.run(operation, *args)


def _unavailable(exc: sqlite3.Error) -> IndexUnavailable:
    return IndexUnavailable(f"SQLite cache index error: {exc}")


_READER_BUSY_TIMEOUT = 0.05
"""Seconds a lookup may wait for a lock; only WAL recovery by another process takes one."""


# Everything below runs on the worker thread (and _lookup and _recall on the event loop's, reading).


def _lookup(connection: sqlite3.Connection, scope: CacheScope, hashes: list[bytes], now: float) -> list[IndexMatch]:
    matches: list[IndexMatch] = []
    for start in range(0, len(hashes), _LOOKUP_CHUNK):
        chunk = hashes[start : start + _LOOKUP_CHUNK]
        statement = _LOOKUP.format(placeholders=", ".join("?" * len(chunk)))
        rows = connection.execute(statement, (scope.principal, scope.model, scope.tokenizer_version, now, *chunk))
        matches.extend(
            IndexMatch(
                prefix_hash=prefix_hash,
                cumulative_tokens=cumulative_tokens,
                ttl=TtlTier(ttl),
                expires_at=expires_at,
            )
            for prefix_hash, cumulative_tokens, ttl, expires_at in rows
        )
    return matches


def _execute_many(connection: sqlite3.Connection, statement: str, rows: list[dict[str, object]]) -> None:
    with transaction(connection):
        connection.executemany(statement, rows)


def _write(connection: sqlite3.Connection, rows: list[dict[str, object]], trail_rows: list[dict[str, object]]) -> None:
    """The entries and the trails of one commit, in one transaction."""
    with transaction(connection):
        connection.executemany(_WRITE, rows)
        connection.executemany(_WRITE_TRAIL, trail_rows)


def _recall(
    connection: sqlite3.Connection, scope: CacheScope, hashes: list[bytes], keys: list[bytes], now: float
) -> Recall:
    scoped = (scope.principal, scope.model, scope.tokenizer_version)
    expired: set[bytes] = set()
    for start in range(0, len(hashes), _LOOKUP_CHUNK):
        chunk = hashes[start : start + _LOOKUP_CHUNK]
        statement = _RECALL_EXPIRED.format(placeholders=", ".join("?" * len(chunk)))
        expired.update(prefix_hash for (prefix_hash,) in connection.execute(statement, (*scoped, now, *chunk)))
    trails: tuple[Trail, ...] = ()
    if keys:
        statement = _RECALL_TRAILS.format(placeholders=", ".join("?" * len(keys)))
        trails = tuple(
            Trail(scope, key, anchor, sections, expires_at)
            for key, anchor, sections, expires_at in connection.execute(statement, (*scoped, *keys))
        )
    return Recall(frozenset(expired), trails)


def _sweep(connection: sqlite3.Connection, now: float) -> int:
    with transaction(connection):
        removed = connection.execute(_SWEEP, (now,)).rowcount
        return removed + connection.execute(_SWEEP_TRAILS, (now,)).rowcount
