"""Versioned schema migrations, one mechanism for every schema cachegate keeps in SQL.

A schema is a ``Track``: the steps in its package's ``migrations/NNNN_name.sql`` files, applied
once, in order, and recorded in the track's own bookkeeping table (the control store's
``schema_migrations``, the cache index's ``cache_index_migrations``), on SQLite and PostgreSQL
alike. A step is written once for both databases, its differences as ``${slots}`` of
``cachegate.sql.dialect``.

A database laid out before its track had a bookkeeping table is adopted: the steps it already
holds are recorded as applied, not run. Which those are, the track says: the SQLite file's
``PRAGMA user_version`` (the cache index's old version number, still kept up to date so that an
older cachegate refuses a newer file), or on PostgreSQL how many of the tables its steps create
(one each) exist.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import asyncpg

from cachegate.sql.dialect import Dialect, encode_timestamp
from cachegate.sql.sqlite import split_statements, transaction

# The advisory lock that serialises migrations across processes, every track's ("cachegat" in ASCII).
# Any constant works, as long as nothing else in the database takes the same advisory lock.
MIGRATION_LOCK = 0x6361636865676174

_STEP_FILE = re.compile(r"(?P<version>[0-9]{4})_(?P<name>[a-z0-9_]+)\.sql")


class SchemaTooNew(Exception):
    """The database holds steps of a track that this cachegate does not know: a newer one wrote it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    template: str

    def render(self, dialect: Dialect) -> str:
        return dialect.fill(self.template)


@dataclass(frozen=True, slots=True)
class Track:
    """One schema: its steps (``package``/migrations) and the table that records the applied ones."""

    package: str
    table: str
    refuse_newer: bool = False
    """Refuse a database with steps this cachegate does not know (the store applies what it knows)."""
    legacy_user_version: bool = False
    """SQLite: ``PRAGMA user_version`` counts the steps applied before the bookkeeping table, and
    is kept equal to the latest applied step."""
    legacy_tables: tuple[str, ...] = ()
    """PostgreSQL: the table step N created is ``legacy_tables[N - 1]``; the steps of a database
    from before the bookkeeping table are those whose tables exist (in order)."""

    @property
    def steps(self) -> tuple[Migration, ...]:
        return _steps(self.package)

    @property
    def latest(self) -> int:
        return self.steps[-1].version if self.steps else 0

    def bookkeeping_ddl(self, dialect: Dialect) -> str:
        """The bookkeeping table; created before anything else, so it cannot be a step itself."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL,"
            f" applied_at {dialect.slot('timestamp')} NOT NULL)"
        )

    def _check_known(self, versions: set[int]) -> None:
        newer = sorted(version for version in versions if version > self.latest)
        if newer and self.refuse_newer:
            raise SchemaTooNew(
                f"the {self.table} schema has step {newer[-1]}, written by a newer cachegate"
                f" (this one knows steps up to {self.latest})"
            )


def _now() -> datetime:
    return datetime.now(UTC)


@functools.cache
def _steps(package: str) -> tuple[Migration, ...]:
    steps = []
    for entry in resources.files(package).joinpath("migrations").iterdir():
        match = _STEP_FILE.fullmatch(entry.name)
        if match is None:
            continue
        steps.append(Migration(int(match["version"]), match["name"], entry.read_text(encoding="utf-8")))
    steps.sort(key=lambda step: step.version)
    versions = [step.version for step in steps]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration steps of {package} share a version number: {versions}")
    return tuple(steps)


def migrate_sqlite(connection: sqlite3.Connection, track: Track) -> None:
    """Apply the track's missing steps under BEGIN IMMEDIATE, which also serialises concurrent callers."""
    record = f"INSERT INTO {track.table} (version, name, applied_at) VALUES (?, ?, ?)"
    with transaction(connection):
        connection.execute(track.bookkeeping_ddl(Dialect.SQLITE))
        applied = {version for (version,) in connection.execute(f"SELECT version FROM {track.table}")}
        if not applied and track.legacy_user_version:
            (held,) = connection.execute("PRAGMA user_version").fetchone()
            track._check_known({held})
            for step in track.steps[:held]:
                connection.execute(record, (step.version, step.name, encode_timestamp(_now())))
                applied.add(step.version)
        track._check_known(applied)
        for step in track.steps:
            if step.version in applied:
                continue
            for statement in split_statements(step.render(Dialect.SQLITE)):
                connection.execute(statement)
            connection.execute(record, (step.version, step.name, encode_timestamp(_now())))
        if track.legacy_user_version:
            connection.execute(f"PRAGMA user_version = {max(track.latest, *applied, 0)}")


async def migrate_postgres(connection: asyncpg.Connection, track: Track) -> None:
    """Apply the track's missing steps in one transaction, under an advisory lock held until commit.

    An up-to-date schema is seen without the lock or any DDL: CREATE ... IF NOT EXISTS needs CREATE
    rights even when the table is there, and a least-privileged runtime role should be able to use
    a schema its administrator migrated. Such a role may not read the bookkeeping table, or create
    it in a database from before it: then a schema whose tables are all there is used as it is.
    """
    try:
        if await _up_to_date(connection, track):
            return
        await _apply_postgres(connection, track)
    except asyncpg.InsufficientPrivilegeError:
        if not track.legacy_tables or await _legacy_steps(connection, track) < track.latest:
            raise


async def _up_to_date(connection: asyncpg.Connection, track: Track) -> bool:
    if await connection.fetchval("SELECT to_regclass($1)", track.table) is None:
        return False
    applied = {row["version"] for row in await connection.fetch(f"SELECT version FROM {track.table}")}
    track._check_known(applied)
    return all(step.version in applied for step in track.steps)


async def _apply_postgres(connection: asyncpg.Connection, track: Track) -> None:
    record = f"INSERT INTO {track.table} (version, name, applied_at) VALUES ($1, $2, $3)"
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(track.bookkeeping_ddl(Dialect.POSTGRES))
        applied = {row["version"] for row in await connection.fetch(f"SELECT version FROM {track.table}")}
        if not applied and track.legacy_tables:
            for step in track.steps[: await _legacy_steps(connection, track)]:
                await connection.execute(record, step.version, step.name, _now())
                applied.add(step.version)
        track._check_known(applied)
        for step in track.steps:
            if step.version in applied:
                continue
            await connection.execute(step.render(Dialect.POSTGRES))
            await connection.execute(record, step.version, step.name, _now())


async def _legacy_steps(connection: asyncpg.Connection, track: Track) -> int:
    """How many of the track's first steps a database from before its bookkeeping table holds."""
    held = 0
    for table in track.legacy_tables:
        if await connection.fetchval("SELECT to_regclass($1)", table) is None:
            break
        held += 1
    return held
