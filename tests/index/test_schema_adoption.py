"""The SQL indexes' schema under the shared migration mechanism: databases laid out by the cachegate
before it (an SQLite file versioned by ``PRAGMA user_version``; PostgreSQL tables made with
CREATE ... IF NOT EXISTS) are adopted with their entries, and a newer schema is refused.

The old layouts are written here by hand, verbatim as that cachegate wrote them, so these tests
keep meaning the same whatever the migration steps become.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from cachegate.core.types import CacheScope, IndexEntry, Trail, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.postgres import PostgresIndex
from cachegate.index.schema import SCHEMA
from cachegate.index.sqlite import SqliteIndex

from pg import PgServer

NOW = 1_750_000_000.0
SCOPE = CacheScope(principal="alice", model="qwen", tokenizer_version="sha256:v1")
PREFIX = hashlib.sha256(b"prefix").digest()
TRAIL = Trail(SCOPE, b"latest", b"", b"12345678", NOW + 300)

LEGACY_SQLITE_1 = """
CREATE TABLE IF NOT EXISTS cache_index_entries (
    principal         TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    tokenizer_version TEXT    NOT NULL,
    prefix_hash       BLOB    NOT NULL,
    cumulative_tokens INTEGER NOT NULL CHECK (cumulative_tokens >= 0),
    ttl               TEXT    NOT NULL CHECK (ttl IN ('5m', '1h', '24h')),
    expires_at        REAL    NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, prefix_hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_index_entries_expires_at ON cache_index_entries (expires_at);
"""

LEGACY_SQLITE_2 = """
CREATE TABLE IF NOT EXISTS cache_index_trails (
    principal         TEXT NOT NULL,
    model             TEXT NOT NULL,
    tokenizer_version TEXT NOT NULL,
    key               BLOB NOT NULL,
    anchor            BLOB NOT NULL,
    sections          BLOB NOT NULL,
    expires_at        REAL NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_index_trails_expires_at ON cache_index_trails (expires_at);
"""

LEGACY_POSTGRES = """
CREATE TABLE IF NOT EXISTS cache_index_entries (
    principal         TEXT             NOT NULL,
    model             TEXT             NOT NULL,
    tokenizer_version TEXT             NOT NULL,
    prefix_hash       BYTEA            NOT NULL,
    cumulative_tokens BIGINT           NOT NULL CHECK (cumulative_tokens >= 0),
    ttl               TEXT             NOT NULL CHECK (ttl IN ('5m', '1h', '24h')),
    expires_at        DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, prefix_hash)
);
CREATE INDEX IF NOT EXISTS cache_index_entries_expires_at ON cache_index_entries (expires_at);
CREATE TABLE IF NOT EXISTS cache_index_trails (
    principal         TEXT             NOT NULL,
    model             TEXT             NOT NULL,
    tokenizer_version TEXT             NOT NULL,
    key               BYTEA            NOT NULL,
    anchor            BYTEA            NOT NULL,
    sections          BYTEA            NOT NULL,
    expires_at        DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (principal, model, tokenizer_version, key)
);
CREATE INDEX IF NOT EXISTS cache_index_trails_expires_at ON cache_index_trails (expires_at);
"""

INSERT_ENTRY = "INSERT INTO cache_index_entries VALUES ('alice', 'qwen', 'sha256:v1', {prefix}, 1024, '1h', {expires})"
INSERT_TRAIL = (
    "INSERT INTO cache_index_trails VALUES ('alice', 'qwen', 'sha256:v1', {key}, {empty}, {sections}, {expires})"
)


def _legacy_sqlite_file(path: Path, version: int) -> None:
    """An index file as the cachegate before the shared migrations left it, with an entry (and a trail)."""
    with closing(sqlite3.connect(path)) as connection:
        connection.executescript(LEGACY_SQLITE_1 + (LEGACY_SQLITE_2 if version >= 2 else ""))
        connection.execute(INSERT_ENTRY.format(prefix="?", expires="?"), (PREFIX, NOW + 3600))
        if version >= 2:
            connection.execute(
                INSERT_TRAIL.format(key="?", empty="?", sections="?", expires="?"),
                (TRAIL.key, TRAIL.anchor, TRAIL.sections, TRAIL.expires_at),
            )
        connection.execute(f"PRAGMA user_version = {version}")
        connection.commit()


def _bookkeeping(path: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"SELECT version, name FROM {SCHEMA.table} ORDER BY version").fetchall()


async def test_an_sqlite_file_at_user_version_2_is_adopted_with_its_entries_and_trails(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    _legacy_sqlite_file(path, 2)

    index = await SqliteIndex.open(str(path))
    try:
        assert [match.prefix_hash for match in await index.lookup(SCOPE, [PREFIX], NOW)] == [PREFIX]
        assert (await index.recall(SCOPE, [], [TRAIL.key], NOW)).trails == (TRAIL,)
        await index.write([IndexEntry(SCOPE, b"p" * 32, 2048, TtlTier.FIVE_MINUTES, NOW + 300)], NOW)
        assert len(await index.lookup(SCOPE, [PREFIX, b"p" * 32], NOW)) == 2
    finally:
        await index.aclose()

    assert _bookkeeping(path) == [(step.version, step.name) for step in SCHEMA.steps]
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA.latest,)

    reopened = await SqliteIndex.open(str(path))  # adopted once: the second opening applies nothing
    await reopened.aclose()
    assert _bookkeeping(path) == [(step.version, step.name) for step in SCHEMA.steps]


async def test_an_sqlite_file_of_schema_1_gains_the_trails_and_keeps_its_entries(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    _legacy_sqlite_file(path, 1)

    index = await SqliteIndex.open(str(path))
    try:
        await index.write([], NOW, [TRAIL])
        assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
        assert (await index.recall(SCOPE, [], [TRAIL.key], NOW)).trails == (TRAIL,)
    finally:
        await index.aclose()
    assert [version for version, _ in _bookkeeping(path)] == [1, 2]


async def test_an_sqlite_file_with_a_step_this_cachegate_does_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    await (await SqliteIndex.open(str(path))).aclose()  # made by this cachegate
    with closing(sqlite3.connect(path)) as connection:
        connection.execute(
            f"INSERT INTO {SCHEMA.table} VALUES (?, 'from_the_future', '2030-01-01T00:00:00.000000+00:00')",
            (SCHEMA.latest + 1,),
        )
        connection.commit()

    with pytest.raises(IndexUnavailable, match="newer"):
        await SqliteIndex.open(str(path))


async def _legacy_postgres(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(LEGACY_POSTGRES)
        await connection.execute(INSERT_ENTRY.format(prefix="$1", expires="$2"), PREFIX, NOW + 3600)
        await connection.execute(
            INSERT_TRAIL.format(key="$1", empty="$2", sections="$3", expires="$4"),
            TRAIL.key,
            TRAIL.anchor,
            TRAIL.sections,
            TRAIL.expires_at,
        )
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_a_postgres_index_made_by_the_cachegate_before_is_adopted_with_its_rows(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    await _legacy_postgres(url)

    index = await PostgresIndex.open(url)
    try:
        assert [match.prefix_hash for match in await index.lookup(SCOPE, [PREFIX], NOW)] == [PREFIX]
        assert (await index.recall(SCOPE, [], [TRAIL.key], NOW)).trails == (TRAIL,)
    finally:
        await index.aclose()

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(f"SELECT version, name FROM {SCHEMA.table} ORDER BY version")
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [(step.version, step.name) for step in SCHEMA.steps]


@pytest.mark.postgres
async def test_a_role_without_create_rights_uses_the_tables_the_cachegate_before_made(pg_server: PgServer) -> None:
    """The runtime role cannot create the bookkeeping table; the tables its administrator made are all there."""
    url = pg_server.create_database()
    await _legacy_postgres(url)
    role = f"cachegate_test_runtime_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        await admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON cache_index_entries, cache_index_trails TO {role}"
        )

        index = await PostgresIndex.open(url.replace("//postgres@", f"//{role}@", 1))
        try:
            assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
        finally:
            await index.aclose()
        assert await admin.fetchval("SELECT to_regclass($1)", SCHEMA.table) is None
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


@pytest.mark.postgres
async def test_a_postgres_index_with_a_step_this_cachegate_does_not_know_is_refused(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    await (await PostgresIndex.open(url)).aclose()
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"INSERT INTO {SCHEMA.table} VALUES ($1, 'from_the_future', now())", SCHEMA.latest + 1)
    finally:
        await connection.close()

    with pytest.raises(IndexUnavailable, match="newer"):
        await PostgresIndex.open(url)
