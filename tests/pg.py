"""PostgreSQL fixtures shared by the suites that need a real server (cache index, control store).

Use them from a suite's conftest.py: ``from pg import pg_server, pg_url``.

The server is ``CACHEGATE_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
a superuser with trust auth). Each test session works in databases of its own, named
``cachegate_test_<random hex>``, created from that DSN's database and dropped at the end.
If the server cannot be reached the tests are skipped, except under CI (``CI=true``), where
they fail: a CI run must never pass by silently skipping its PostgreSQL tests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest

_T = TypeVar("_T")

ADMIN_DSN = os.environ.get("CACHEGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion from sync code, even inside an async test.

    It gets a loop of its own on a thread of its own: the session outlives the tests' loops, and
    the calling thread may be running one (pytest-asyncio's) already.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-fixture") as executor:
        return executor.submit(asyncio.run, coroutine).result()


class PgServer:
    """The test server: makes fresh databases and drops them all at the end of the session."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self._created: list[str] = []

    def probe(self) -> None:
        """Raise if the server cannot be reached."""

        async def probe() -> None:
            connection = await asyncpg.connect(self.admin_dsn, timeout=5)
            await connection.close()

        _run(probe())

    def database_url(self) -> str:
        """The URL of a fresh database that does not exist yet (``create_database(url)`` makes it).

        For tests of a service started before its database; it is dropped at the end like the others.
        """
        name = f"cachegate_test_{secrets.token_hex(6)}"
        self._created.append(name)
        return urlsplit(self.admin_dsn)._replace(path=f"/{name}").geturl()

    def create_database(self, url: str | None = None) -> str:
        """Create an empty database (``url``'s, or a fresh one) and return its URL; from sync or async tests."""
        url = url or self.database_url()
        _run(self._execute(f'CREATE DATABASE "{urlsplit(url).path.lstrip("/")}"'))
        return url

    def drop_all(self) -> None:
        while self._created:
            name = self._created.pop()
            _run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _execute(self, statement: str) -> None:
        connection = await asyncpg.connect(self.admin_dsn, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL test server; skips (fails under CI=true) when it is unreachable."""
    server = PgServer(ADMIN_DSN)
    try:
        server.probe()
    except (OSError, asyncpg.PostgresError) as exc:
        host = urlsplit(ADMIN_DSN).netloc.rpartition("@")[2]
        message = f"PostgreSQL is not reachable at {host}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """The URL of a database created for this test session (tests share it; clean up after you)."""
    return pg_server.create_database()
