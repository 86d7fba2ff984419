"""The shared cache index: one PostgreSQL table that every gateway replica reads and writes.

Timestamps are stored as ``double precision`` Unix seconds, exactly the floats of the API: they
round-trip bit for bit (``timestamptz`` would round to microseconds), and all comparisons use the
caller's ``now``, never the server's ``now()``, so each replica's view of expiry follows its own
request time, as with the other backends.

Several replicas write, refresh and sweep the same rows at once, so two rules keep them from
deadlocking each other: a batch locks its rows in one global order (sorted by key), and a sweep skips
rows that somebody else holds locked rather than waiting for them.

The index's sessions commit with ``synchronous_commit = off``: a commit no longer waits for the WAL
flush (a few milliseconds on every write, on the response's path by SPEC §7.4), and is still visible
to every other session at once. A server crash can lose the last fraction of a second of writes;
for a cache that only costs discounts, the same trade as SQLite's ``synchronous = NORMAL``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import asyncpg

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Recall, Refresh, Trail, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.schema import SCHEMA
from cachegate.sql.migrations import SchemaTooNew, migrate_postgres

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

TABLE = "cache_index_entries"
TRAILS = "cache_index_trails"

# The statements are this adapter's own (SQLite's are plain statements in one transaction): arrays,
# lateral probes and SKIP LOCKED have no SQLite twin. The schema is shared: cachegate/index/migrations.

# One probe of the primary key per candidate, whatever the planner believes of the table: with
# ``prefix_hash = ANY($4)`` and no statistics yet (a table filled faster than autovacuum analyses
# it), PostgreSQL probes the scope alone and filters all its rows by hash, which took 19 ms per
# lookup at a million entries (bench/index_lookup.py). LIMIT 1 keeps the lateral subquery from
# being flattened into a hash join; the key makes it at most one row anyway.
_LOOKUP = f"""
SELECT entry.prefix_hash, entry.cumulative_tokens, entry.ttl, entry.expires_at
FROM (SELECT DISTINCT unnest($4::bytea[])) AS candidate (prefix_hash),
LATERAL (
    SELECT prefix_hash, cumulative_tokens, ttl, expires_at FROM {TABLE}
    WHERE principal = $1 AND model = $2 AND tokenizer_version = $3 AND prefix_hash = candidate.prefix_hash
      AND expires_at > $5
    LIMIT 1
) AS entry
"""

_WRITE = f"""
INSERT INTO {TABLE} AS stored
    (principal, model, tokenizer_version, prefix_hash, cumulative_tokens, ttl, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (principal, model, tokenizer_version, prefix_hash) DO UPDATE SET
    cumulative_tokens = EXCLUDED.cumulative_tokens,
    ttl = CASE WHEN stored.expires_at > EXCLUDED.expires_at THEN stored.ttl ELSE EXCLUDED.ttl END,
    expires_at = GREATEST(stored.expires_at, EXCLUDED.expires_at)
"""

# A commit's entries and its trails in one statement, so one round trip (the usual case: a commit's
# entries are distinct breakpoints, its trails distinct keys; ON CONFLICT cannot take one key twice).
# The trails' upsert is a WITH the main statement does not read: it runs after it, in every replica
# alike, so the row locks are always taken in one order.
_WRITE_WITH_TRAILS = f"""
WITH trails AS (
    INSERT INTO {TRAILS} AS stored (principal, model, tokenizer_version, key, anchor, sections, expires_at)
    SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::bytea[], $12::bytea[], $13::bytea[], $14::float8[])
    ON CONFLICT (principal, model, tokenizer_version, key) DO UPDATE SET
        anchor = EXCLUDED.anchor,
        sections = EXCLUDED.sections,
        expires_at = GREATEST(stored.expires_at, EXCLUDED.expires_at)
)
INSERT INTO {TABLE} AS stored
    (principal, model, tokenizer_version, prefix_hash, cumulative_tokens, ttl, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[], $6::text[], $7::float8[])
ON CONFLICT (principal, model, tokenizer_version, prefix_hash) DO UPDATE SET
    cumulative_tokens = EXCLUDED.cumulative_tokens,
    ttl = CASE WHEN stored.expires_at > EXCLUDED.expires_at THEN stored.ttl ELSE EXCLUDED.ttl END,
    expires_at = GREATEST(stored.expires_at, EXCLUDED.expires_at)
"""

_REFRESH = f"""
UPDATE {TABLE} SET expires_at = $5
WHERE principal = $1 AND model = $2 AND tokenizer_version = $3 AND prefix_hash = $4
  AND expires_at > $6 AND expires_at < $5
"""

_WRITE_TRAIL = f"""
INSERT INTO {TRAILS} AS stored (principal, model, tokenizer_version, key, anchor, sections, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (principal, model, tokenizer_version, key) DO UPDATE SET
    anchor = EXCLUDED.anchor,
    sections = EXCLUDED.sections,
    expires_at = GREATEST(stored.expires_at, EXCLUDED.expires_at)
"""

# One statement, so one round trip: the expired entries among the hashes (one probe of the primary
# key per candidate, as in _LOOKUP), then the trails.
_RECALL = f"""
SELECT entry.prefix_hash AS key, NULL::bytea AS anchor, NULL::bytea AS sections, entry.expires_at
FROM (SELECT DISTINCT unnest($4::bytea[])) AS candidate (prefix_hash),
LATERAL (
    SELECT prefix_hash, expires_at FROM {TABLE}
    WHERE principal = $1 AND model = $2 AND tokenizer_version = $3 AND prefix_hash = candidate.prefix_hash
      AND expires_at <= $6
    LIMIT 1
) AS entry
UNION ALL
SELECT key, anchor, sections, expires_at FROM {TRAILS}
WHERE principal = $1 AND model = $2 AND tokenizer_version = $3 AND key = ANY($5::bytea[])
"""

_SWEEP = f"""
DELETE FROM {TABLE} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {TABLE} WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED
))
"""

_SWEEP_TRAILS = f"""
DELETE FROM {TRAILS} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {TRAILS} WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED
))
"""

# Errors that say the connection, not the statement, failed: worth one more try on a fresh
# connection (a server restart, a proxy that closed idle connections, a full connection table).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, ConnectionDoesNotExistError included
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # A pooled connection the server closed while it sat idle can fail its next statement with
    # "cannot switch to state N; another operation (2) is in progress" (MagicStack/asyncpg#1069).
    asyncpg.InternalClientError,
)
# Everything else asyncpg raises: the statement failed, and would fail again.
_QUERY_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError,)

_BACKOFF_SECONDS = 0.05

_SESSION_SETTINGS = {"application_name": "cachegate-index", "synchronous_commit": "off"}


class PostgresIndex:
    """A ``CacheIndex`` in PostgreSQL, over an asyncpg connection pool."""

    def __init__(self, pool: asyncpg.Pool, *, retries: int = 1) -> None:
        """Use ``PostgresIndex.open``, which also creates (or migrates) the tables."""
        self._pool = pool
        self._retries = retries
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        retries: int = 1,
    ) -> PostgresIndex:
        """Connect a pool to ``dsn`` and apply the schema's missing steps (``cachegate.index.schema``).

        ``retries`` is how many more times an operation is tried after a connection-class error.
        Timeouts are never retried: by then the caller's deadline is mostly spent.
        """
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                reset=_keep_session,
                server_settings=_SESSION_SETTINGS,
            )
        except (*_CONNECTION_ERRORS, *_QUERY_ERRORS) as exc:
            raise IndexUnavailable(f"cannot connect to the PostgreSQL cache index: {exc}") from exc
        index = cls(pool, retries=retries)
        try:
            await index._call("migrate the schema", lambda connection: migrate_postgres(connection, SCHEMA))
        except SchemaTooNew as exc:
            await pool.close()
            raise IndexUnavailable(f"the PostgreSQL cache index is unusable: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        return index

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        if not hashes:
            return []
        arguments = (scope.principal, scope.model, scope.tokenizer_version, list(hashes), now)
        rows = await self._call("lookup", lambda connection: connection.fetch(_LOOKUP, *arguments))
        return [
            IndexMatch(
                prefix_hash=row["prefix_hash"],
                cumulative_tokens=row["cumulative_tokens"],
                ttl=TtlTier(row["ttl"]),
                expires_at=row["expires_at"],
            )
            for row in rows
        ]

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        if not trails:
            await self._write_entries(entries)
        elif _distinct(_lock_order(e.scope, e.prefix_hash) for e in entries) and _distinct(
            _lock_order(t.scope, t.key) for t in trails
        ):
            await self._write_with_trails(entries, trails)
        else:
            # A batch that names a key twice applies in order: the entries' statement, and the
            # trails' on a connection of its own beside it.
            await _gather(self._write_entries(entries), self._write_trails(trails))

    async def _write_with_trails(self, entries: Sequence[IndexEntry], trails: Sequence[Trail]) -> None:
        ordered = sorted(entries, key=lambda entry: _lock_order(entry.scope, entry.prefix_hash))
        ordered_trails = sorted(trails, key=lambda trail: _lock_order(trail.scope, trail.key))
        columns = (
            [entry.scope.principal for entry in ordered],
            [entry.scope.model for entry in ordered],
            [entry.scope.tokenizer_version for entry in ordered],
            [entry.prefix_hash for entry in ordered],
            [entry.cumulative_tokens for entry in ordered],
            [entry.ttl.value for entry in ordered],
            [entry.expires_at for entry in ordered],
            [trail.scope.principal for trail in ordered_trails],
            [trail.scope.model for trail in ordered_trails],
            [trail.scope.tokenizer_version for trail in ordered_trails],
            [trail.key for trail in ordered_trails],
            [trail.anchor for trail in ordered_trails],
            [trail.sections for trail in ordered_trails],
            [trail.expires_at for trail in ordered_trails],
        )
        await self._call("write", lambda connection: connection.execute(_WRITE_WITH_TRAILS, *columns))

    async def _write_entries(self, entries: Sequence[IndexEntry]) -> None:
        if not entries:
            return
        # A stable sort keeps duplicates of one key in their order, so the batch means the same.
        rows = [
            (
                entry.scope.principal,
                entry.scope.model,
                entry.scope.tokenizer_version,
                entry.prefix_hash,
                entry.cumulative_tokens,
                entry.ttl.value,
                entry.expires_at,
            )
            for entry in sorted(entries, key=lambda entry: _lock_order(entry.scope, entry.prefix_hash))
        ]
        # executemany: one pipelined round trip, atomic (asyncpg runs it as one transaction).
        await self._call("write", lambda connection: connection.executemany(_WRITE, rows))

    async def _write_trails(self, trails: Sequence[Trail]) -> None:
        ordered = sorted(trails, key=lambda trail: _lock_order(trail.scope, trail.key))
        rows = [
            (
                trail.scope.principal,
                trail.scope.model,
                trail.scope.tokenizer_version,
                trail.key,
                trail.anchor,
                trail.sections,
                trail.expires_at,
            )
            for trail in ordered
        ]
        await self._call("write trails", lambda connection: connection.executemany(_WRITE_TRAIL, rows))

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        arguments = (scope.principal, scope.model, scope.tokenizer_version, list(hashes), list(keys), now)
        rows = await self._call("recall", lambda connection: connection.fetch(_RECALL, *arguments))
        expired = frozenset(row["key"] for row in rows if row["sections"] is None)
        trails = tuple(
            Trail(scope, row["key"], row["anchor"], row["sections"], row["expires_at"])
            for row in rows
            if row["sections"] is not None
        )
        return Recall(expired, trails)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        if not refreshes:
            return
        ordered = sorted(refreshes, key=lambda refresh: _lock_order(refresh.scope, refresh.prefix_hash))
        rows = [
            (
                refresh.scope.principal,
                refresh.scope.model,
                refresh.scope.tokenizer_version,
                refresh.prefix_hash,
                refresh.expires_at,
                now,
            )
            for refresh in ordered
        ]
        await self._call("refresh", lambda connection: connection.executemany(_REFRESH, rows))

    async def sweep(self, now: float) -> int:
        async def sweep_both(connection: asyncpg.Connection) -> int:
            removed = 0
            for statement in (_SWEEP, _SWEEP_TRAILS):
                status = await connection.execute(statement, now)
                removed += int(status.rsplit(" ", 1)[1])  # "DELETE <count>"
            return removed

        return await self._call("sweep", sweep_both)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    async def _call(self, operation: str, run: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run ``run`` on a pooled connection; retry connection errors; raise only IndexUnavailable.

        Every operation is safe to repeat (lookups read; writes, refreshes and sweeps reach the
        same state when applied twice), so a retry after a commit whose answer was lost is harmless.
        """
        attempt = 0
        while True:
            if self._closed:
                raise IndexUnavailable("the PostgreSQL cache index is closed")
            try:
                async with self._pool.acquire() as connection:
                    return await run(connection)
            except TimeoutError as exc:
                raise IndexUnavailable(f"cache index {operation} timed out") from exc
            except _CONNECTION_ERRORS as exc:
                if attempt == self._retries:
                    raise IndexUnavailable(f"cache index {operation} failed: {exc}") from exc
                logger.warning("cache index %s hit a connection error (%s); retrying", operation, exc)
                await asyncio.sleep(_BACKOFF_SECONDS * 2**attempt * random.uniform(1.0, 2.0))
                attempt += 1
            except _QUERY_ERRORS as exc:
                raise IndexUnavailable(f"cache index {operation} failed: {exc}") from exc


def _distinct(keys: Iterable[tuple[str, str, str, bytes]]) -> bool:
    seen: set[tuple[str, str, str, bytes]] = set()
    for key in keys:
        if key in seen:
            return False
        seen.add(key)
    return True


async def _gather(*operations: Awaitable[None]) -> None:
    """Run index operations together; the first error is raised once all have ended."""
    results = await asyncio.gather(*operations, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _lock_order(scope: CacheScope, prefix_hash: bytes) -> tuple[str, str, str, bytes]:
    return (scope.principal, scope.model, scope.tokenizer_version, prefix_hash)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset hook, replacing asyncpg's default round trip (RESET ALL, UNLISTEN *, ...).

    This index never leaves session state behind: no LISTEN, no session-level advisory locks, no
    SET. asyncpg still rolls back a transaction left open (by a cancelled call) before this hook.
    """
