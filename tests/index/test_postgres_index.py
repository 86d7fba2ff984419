"""What is particular to the PostgreSQL backend: schema creation, retries, and how it fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cachegate.core.types import CacheScope, IndexEntry, Refresh, Trail, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.postgres import TABLE, TRAILS, PostgresIndex

from pg import PgServer

NOW = 1_750_000_000.0
SCOPE = CacheScope(principal="alice", model="qwen", tokenizer_version="sha256:v1")
PREFIX = hashlib.sha256(b"prefix").digest()
ENTRY = IndexEntry(SCOPE, PREFIX, cumulative_tokens=1024, ttl=TtlTier.ONE_HOUR, expires_at=NOW + 3600)


# Retry rules, against a pool whose connections fail as scripted.


class _Connection:
    async def execute(self, statement: str, *args: object) -> str:
        return "DELETE 3"


class ScriptedPool:
    """Fails ``acquire`` with each of ``failures`` in turn, then hands out a working connection."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.attempts = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Connection]:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        yield _Connection()

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionResetError("connection reset by peer"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InternalClientError("cannot switch to state 11; another operation (2) is in progress"),
    ],
    ids=type,
)
async def test_a_connection_error_is_retried_once(failure: BaseException) -> None:
    pool = ScriptedPool(failure)

    assert await PostgresIndex(pool, retries=1).sweep(NOW) == 6  # 3 entries and 3 trails, as scripted
    assert pool.attempts == 2


async def test_a_connection_error_that_persists_is_unavailable() -> None:
    pool = ScriptedPool(ConnectionRefusedError(), ConnectionRefusedError(), ConnectionRefusedError())

    with pytest.raises(IndexUnavailable):
        await PostgresIndex(pool, retries=1).sweep(NOW)
    assert pool.attempts == 2


@pytest.mark.parametrize(
    "failure",
    [asyncpg.UndefinedTableError("relation does not exist"), TimeoutError()],
    ids=type,
)
async def test_query_errors_and_timeouts_are_not_retried(failure: BaseException) -> None:
    pool = ScriptedPool(failure)

    with pytest.raises(IndexUnavailable):
        await PostgresIndex(pool, retries=1).sweep(NOW)
    assert pool.attempts == 1


# Against the real server.


async def test_a_closed_port_is_unavailable() -> None:
    with pytest.raises(IndexUnavailable):
        await PostgresIndex.open("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=2)


@pytest.mark.postgres
async def test_replicas_starting_together_all_get_the_table(pg_server: PgServer) -> None:
    url = pg_server.create_database()

    indexes = await asyncio.gather(*(PostgresIndex.open(url, min_size=1, max_size=1) for _ in range(6)))
    try:
        await indexes[0].write([ENTRY], NOW)
        assert len(await indexes[-1].lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await asyncio.gather(*(index.aclose() for index in indexes))


@pytest.mark.postgres
async def test_a_role_without_create_rights_uses_the_table_its_administrator_made(
    pg_server: PgServer,
) -> None:
    url = pg_server.create_database()
    role = f"cachegate_test_runtime_{secrets.token_hex(4)}"
    await (await PostgresIndex.open(url)).aclose()  # the administrator's run creates the table
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        await admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE}, {TRAILS} TO {role}")

        index = await PostgresIndex.open(url.replace("//postgres@", f"//{role}@", 1))
        try:
            await index.write([ENTRY], NOW, [Trail(SCOPE, b"latest", b"", PREFIX[:8], NOW + 3600)])
            assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
            assert len((await index.recall(SCOPE, [], [b"latest"], NOW)).trails) == 1
        finally:
            await index.aclose()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


@pytest.mark.postgres
async def test_concurrent_batches_in_opposite_orders_do_not_deadlock(pg_server: PgServer) -> None:
    """Replicas write the same prefixes at once; without one lock order, they deadlock every time."""
    url = pg_server.create_database()
    index = await PostgresIndex.open(url, min_size=8, max_size=8, retries=0)
    hashes = [hashlib.sha256(str(n).encode()).digest() for n in range(40)]

    async def replica(number: int) -> None:
        order = hashes if number % 2 else hashes[::-1]
        for step in range(10):
            expiry = NOW + 300 + step
            await index.write([IndexEntry(SCOPE, h, 1, TtlTier.FIVE_MINUTES, expiry) for h in order], NOW)
            await index.refresh([Refresh(SCOPE, h, expiry + 60) for h in order[::-1]], NOW)
            await index.sweep(NOW + step)

    try:
        await asyncio.gather(*(replica(number) for number in range(8)))
        assert len(await index.lookup(SCOPE, hashes, NOW)) == len(hashes)
    finally:
        await index.aclose()


@pytest.mark.postgres
async def test_connections_killed_by_the_server_are_replaced(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    index = await PostgresIndex.open(url, min_size=2, max_size=2)
    try:
        await index.write([ENTRY], NOW)
        await _terminate_connections(pg_server, url)

        assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await index.aclose()


@pytest.mark.postgres
async def test_an_outage_is_unavailable_and_the_index_recovers_after_it(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    database = url.rsplit("/", 1)[1]
    index = await PostgresIndex.open(url, min_size=1, max_size=1)
    try:
        await index.write([ENTRY], NOW)
        await _admin(pg_server, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await _terminate_connections(pg_server, url)

        with pytest.raises(IndexUnavailable):
            await index.lookup(SCOPE, [PREFIX], NOW)

        await _admin(pg_server, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert len(await index.lookup(SCOPE, [PREFIX], NOW)) == 1
    finally:
        await index.aclose()


@pytest.mark.postgres
async def test_a_failing_statement_is_unavailable_not_an_asyncpg_error(pg_url: str) -> None:
    index = await PostgresIndex.open(pg_url)
    try:
        connection = await asyncpg.connect(pg_url)
        try:
            await connection.execute(f"DROP TABLE {TABLE}")
        finally:
            await connection.close()

        with pytest.raises(IndexUnavailable):
            await index.lookup(SCOPE, [PREFIX], NOW)
    finally:
        await index.aclose()


@pytest.mark.postgres
async def test_a_closed_index_is_unavailable(pg_url: str) -> None:
    index = await PostgresIndex.open(pg_url)
    await index.aclose()
    await index.aclose()  # closing twice is harmless

    with pytest.raises(IndexUnavailable):
        await index.write([ENTRY], NOW)


async def _admin(pg_server: PgServer, statement: str) -> None:
    connection = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _terminate_connections(pg_server: PgServer, url: str) -> None:
    database = url.rsplit("/", 1)[1]
    await _admin(
        pg_server,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{database}' AND pid <> pg_backend_pid()",
    )
