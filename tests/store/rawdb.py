"""Direct reads of a store's database, to check what is stored, and what is not, behind its API."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import asyncpg

_SQLITE_PREFIX = "sqlite:///"


async def query(url: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of ``sql`` run directly on the database at ``url``."""
    if url.startswith(_SQLITE_PREFIX):
        with contextlib.closing(sqlite3.connect(url.removeprefix(_SQLITE_PREFIX))) as connection:
            return connection.execute(sql).fetchall()
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def execute(url: str, sql: str) -> None:
    """Run one statement that changes the database at ``url``, committed."""
    if url.startswith(_SQLITE_PREFIX):
        with contextlib.closing(sqlite3.connect(url.removeprefix(_SQLITE_PREFIX))) as connection, connection:
            connection.execute(sql)
        return
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def everything_stored(url: str) -> bytes:
    """All the database holds: the SQLite files byte for byte (WAL included), or for
    PostgreSQL every row of every table in its text form."""
    if url.startswith(_SQLITE_PREFIX):
        path = Path(url.removeprefix(_SQLITE_PREFIX))
        return b"".join(file.read_bytes() for file in sorted(path.parent.glob(path.name + "*")))
    tables = await query(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    dump: list[str] = []
    for (table,) in tables:
        dump += [str(text) for (text,) in await query(url, f'SELECT t::text FROM "{table}" t')]
    return "\n".join(dump).encode()
