"""The reconnecting index: starts without its backend, fails fast while it is missing, backs off, then serves."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cachegate.core.types import CacheScope, IndexEntry, Trail, TtlTier
from cachegate.index.base import CacheIndex, IndexUnavailable
from cachegate.index.factory import open_index
from cachegate.index.memory import MemoryIndex
from cachegate.index.reconnecting import ReconnectingIndex

from pg import PgServer
from redis_server import RedisServer
from tcp_relay import TcpRelay

SCOPE = CacheScope("p", "m", "v1")
ENTRY = IndexEntry(SCOPE, b"h" * 32, 10, TtlTier.FIVE_MINUTES, 1_000.0)
TRAIL = Trail(SCOPE, b"latest", b"anchor-1", b"s" * 16, 1_000.0)
GIVE_UP_AFTER = 10.0


class FlakyOpener:
    """Fails ``failures`` times with IndexUnavailable, then opens a memory index; counts attempts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.opened: list[MemoryIndex] = []

    async def __call__(self) -> CacheIndex:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise IndexUnavailable(f"down (attempt {self.attempts})")
        index = MemoryIndex()
        self.opened.append(index)
        return index


async def until_connected(index: ReconnectingIndex) -> None:
    async with asyncio.timeout(GIVE_UP_AFTER):
        while not index.connected:
            await asyncio.sleep(0.005)


async def test_an_index_that_answers_is_used_at_once() -> None:
    opener = FlakyOpener(0)
    index = await ReconnectingIndex.open(opener)
    assert index.connected and index.last_error is None
    await index.write([ENTRY], 0.0, [TRAIL])
    assert [match.prefix_hash for match in await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)] == [ENTRY.prefix_hash]
    recalled = await index.recall(SCOPE, [ENTRY.prefix_hash], [TRAIL.key], 2_000.0)
    assert recalled.expired == {ENTRY.prefix_hash} and recalled.trails == (TRAIL,)
    await index.aclose()
    assert opener.attempts == 1


async def test_a_missing_backend_fails_fast_then_is_reconnected_in_the_background() -> None:
    opener = FlakyOpener(3)
    index = await ReconnectingIndex.open(opener, min_backoff=0.01, max_backoff=0.02)
    assert not index.connected and index.last_error == "down (attempt 1)"
    for operation in (
        index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0),
        index.write([ENTRY], 0.0),
        index.refresh([], 0.0),
        index.recall(SCOPE, [ENTRY.prefix_hash], [TRAIL.key], 0.0),
        index.sweep(0.0),
    ):
        with pytest.raises(IndexUnavailable, match="not connected yet"):
            await operation
    await until_connected(index)
    assert opener.attempts == 4 and index.last_error is None
    await index.write([ENTRY], 0.0)
    assert len(await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)) == 1
    await index.aclose()


async def test_requests_do_not_trigger_attempts_of_their_own() -> None:
    """Many failing calls while the backend is down cost no connection attempts: only the backoff does."""
    opener = FlakyOpener(10**9)
    index = await ReconnectingIndex.open(opener, min_backoff=0.2, max_backoff=0.2)
    for _ in range(1000):
        with pytest.raises(IndexUnavailable):
            await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)
    assert opener.attempts == 1
    await index.aclose()


async def test_backoff_grows_to_its_cap() -> None:
    opener = FlakyOpener(10**9)
    index = await ReconnectingIndex.open(opener, min_backoff=0.01, max_backoff=0.04)
    await asyncio.sleep(0.5)
    # 0.01, 0.02, 0.04, 0.04, ... (±20 %): about 13 attempts in 0.5 s, never the hundreds of a busy loop.
    assert 5 <= opener.attempts <= 20
    await index.aclose()


async def test_close_stops_the_attempts_and_closes_what_was_opened() -> None:
    opener = FlakyOpener(10**9)
    index = await ReconnectingIndex.open(opener, min_backoff=0.01, max_backoff=0.01)
    await index.aclose()
    attempts = opener.attempts
    await asyncio.sleep(0.05)
    assert opener.attempts == attempts
    with pytest.raises(IndexUnavailable, match="closed"):
        await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)


async def test_a_configuration_error_is_raised_not_retried() -> None:
    async def bad() -> CacheIndex:
        raise ValueError("unsupported cache index URL scheme 'redis'")

    with pytest.raises(ValueError, match="unsupported"):
        await ReconnectingIndex.open(bad)


@pytest.mark.postgres
async def test_a_postgres_database_created_after_start_is_picked_up(pg_server: PgServer) -> None:
    url = pg_server.database_url()
    index = await ReconnectingIndex.open(lambda: open_index(url), min_backoff=0.05, max_backoff=0.1)
    assert not index.connected and index.last_error is not None
    pg_server.create_database(url)
    try:
        await until_connected(index)
        await index.write([ENTRY], 0.0)
        assert len(await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)) == 1
    finally:
        await index.aclose()


@pytest.mark.redis
async def test_a_redis_down_at_start_and_midway_degrades_and_recovers(redis_server: RedisServer) -> None:
    relay = TcpRelay(redis_server.address, _free_port())  # switched off: connection refused
    prefix = redis_server.fresh_prefix()
    url = redis_server.index_url(prefix, f"redis://127.0.0.1:{relay.port}/0")
    index = await ReconnectingIndex.open(lambda: open_index(url), min_backoff=0.05, max_backoff=0.1)
    try:
        assert not index.connected
        with pytest.raises(IndexUnavailable):
            await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)
        relay.start()
        await until_connected(index)
        await index.write([ENTRY], 0.0)

        relay.stop()  # down mid-run: connections cut, port closed; every call fails, none hangs
        for operation in (index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0), index.write([ENTRY], 0.0), index.sweep(0.0)):
            with pytest.raises(IndexUnavailable):
                await operation

        relay.start()  # back: the next call reconnects, and what was written is still there
        assert [match.prefix_hash for match in await index.lookup(SCOPE, [ENTRY.prefix_hash], 0.0)] == [
            ENTRY.prefix_hash
        ]
    finally:
        await index.aclose()
        relay.stop()
        redis_server.drop(prefix)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
