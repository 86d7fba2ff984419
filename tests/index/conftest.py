"""Fixtures of the cache index suites: a fresh, empty index of each backend.

(This folder is a package so that pytest puts tests/ on sys.path, where the shared ``pg`` lives.)
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cachegate.index.base import CacheIndex
from cachegate.index.factory import open_index
from cachegate.index.postgres import TABLE, TRAILS
from cachegate.index.schema import SCHEMA

from pg import pg_server, pg_url  # noqa: F401  (fixtures)
from redis_server import LocalCluster, redis_cluster, redis_server, redis_url  # noqa: F401  (fixtures)

POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
REDIS = pytest.param("redis", marks=pytest.mark.redis)
REDIS_CLUSTER = pytest.param("redis-cluster", marks=pytest.mark.redis)


def _backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    if request.param == "redis-cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        prefix = secrets.token_hex(6)
        request.addfinalizer(lambda: cluster.drop(f"cachegate-test-{prefix}"))
        return cluster.index_url(f"cachegate-test-{prefix}")
    if request.param == "redis":
        redis: str = request.getfixturevalue("redis_url")  # a key prefix of this test's own
        return redis
    url: str = request.getfixturevalue("pg_url")
    return url


async def _open_empty(url: str) -> CacheIndex:
    """Open the index at ``url`` with no entries (for the SQL backends, no tables yet; Redis starts
    empty under its fresh key prefix)."""
    if url.startswith(("postgresql:", "postgres:")):
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(f"DROP TABLE IF EXISTS {TABLE}, {TRAILS}, {SCHEMA.table}")
        finally:
            await connection.close()
    return await open_index(url)


@pytest.fixture(params=["memory", "sqlite", POSTGRES, REDIS, REDIS_CLUSTER])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _backend_url(request, tmp_path)


@pytest.fixture(params=["sqlite", POSTGRES, REDIS, REDIS_CLUSTER])
def sql_index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _backend_url(request, tmp_path)


@pytest.fixture
async def index(index_url: str) -> AsyncIterator[CacheIndex]:
    """An empty index of every backend in turn."""
    opened = await _open_empty(index_url)
    yield opened
    await opened.aclose()


@pytest.fixture
async def sql_index(sql_index_url: str) -> AsyncIterator[CacheIndex]:
    """An empty index of each backend that is not the in-memory reference."""
    opened = await _open_empty(sql_index_url)
    yield opened
    await opened.aclose()
