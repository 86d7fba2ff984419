"""What is particular to the Redis backend: its keys, its commands on the wire, native expiry, and how it fails.

The commands are observed as the server sees them (``MONITOR``), not by instrumenting the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import redis.asyncio as aioredis
import trustme
from redis.crc import key_slot

from cachegate.core.types import CacheScope, IndexEntry, Refresh, TtlTier
from cachegate.index.base import IndexUnavailable
from cachegate.index.factory import open_index
from cachegate.index.redis import RedisIndex

from redis_server import RedisServer

pytestmark = pytest.mark.redis

NOW = 1_750_000_000.0
GRACE = 60.0
ALICE = CacheScope(principal="alice", model="qwen", tokenizer_version="sha256:v1")


def digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def entry(name: str, expires_at: float = NOW + 300, scope: CacheScope = ALICE) -> IndexEntry:
    return IndexEntry(scope, digest(name), 1024, TtlTier.FIVE_MINUTES, expires_at)


@pytest.fixture
def key_prefix(redis_url: str) -> str:
    return parse_qs(urlsplit(redis_url).query)["key_prefix"][0]


@pytest.fixture
async def index(redis_url: str) -> AsyncIterator[RedisIndex]:
    opened = await open_index(redis_url, expiry_grace=GRACE)
    assert isinstance(opened, RedisIndex)
    yield opened
    await opened.aclose()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of the same server, to look at the keys."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def keys_of(raw: aioredis.Redis, key_prefix: str) -> list[bytes]:
    return sorted([key async for key in raw.scan_iter(match=f"{key_prefix}:*")])


async def commands_sent(
    raw: aioredis.Redis, key_prefix: str, action: Callable[[], Awaitable[object]]
) -> list[tuple[str, ...]]:
    """The commands naming this test's keys that clients sent while ``action`` ran (those a script
    ran inside the server are left out), as the server's MONITOR reports them."""
    sentinel = f"{key_prefix}-done"
    async with raw.monitor() as monitor:
        await action()
        await raw.echo(sentinel)
        seen: list[tuple[str, ...]] = []
        while True:
            command = await monitor.next_command()
            if sentinel in command["command"]:
                return seen
            if command["client_type"] != "lua" and key_prefix in command["command"]:
                seen.append(tuple(command["command"].split(" ")))


async def test_every_key_of_a_scope_is_in_one_slot_and_names_its_scope_unambiguously(
    index: RedisIndex, raw: aioredis.Redis, key_prefix: str
) -> None:
    # Scopes that would run together if their parts were joined as they are, or break the hash tag.
    tricky = [
        CacheScope("a|b", "c", "v1"),
        CacheScope("a", "b|c", "v1"),
        CacheScope("{x}", "m", "v1"),
        CacheScope("x", "m}", "{v1"),
        CacheScope("a%7Cb", "c", "v1"),
    ]
    await index.write([entry(name, scope=scope) for scope in tricky for name in ("p1", "p2", "p3")], NOW)

    keys = await keys_of(raw, key_prefix)
    assert len(keys) == 15
    slots_by_tag: dict[bytes, set[int]] = {}
    for key in keys:
        tag = key.split(b"{", 1)[1].split(b"}", 1)[0]
        slots_by_tag.setdefault(tag, set()).add(key_slot(key))
    assert len(slots_by_tag) == len(tricky) and all(len(slots) == 1 for slots in slots_by_tag.values())
    for scope in tricky:
        found = await index.lookup(scope, [digest("p1"), digest("p2"), digest("p3")], NOW)
        assert len(found) == 3


async def test_a_lookup_of_twenty_candidates_is_one_command(
    index: RedisIndex, raw: aioredis.Redis, key_prefix: str
) -> None:
    candidates = [digest(f"candidate-{n}") for n in range(20)]
    await index.write([entry(f"candidate-{n}") for n in range(0, 20, 3)], NOW)

    found: list[object] = []

    async def lookup() -> None:
        found.extend(await index.lookup(ALICE, candidates, NOW))

    commands = await commands_sent(raw, key_prefix, lookup)
    assert [command[0].upper() for command in commands] == ["MGET"]
    assert len(found) == 7


async def test_a_batch_of_one_scope_is_one_command_and_refreshes_of_one_key_are_coalesced(
    index: RedisIndex, raw: aioredis.Redis, key_prefix: str
) -> None:
    async def write() -> None:
        await index.write([entry("a"), entry("b"), entry("a", NOW + 600)], NOW)

    async def refresh() -> None:
        slides = [NOW + 900, NOW + 3600, NOW + 1200]
        await index.refresh(
            [Refresh(ALICE, digest("a"), at) for at in slides] + [Refresh(ALICE, digest("b"), NOW + 400)], NOW
        )

    (written,) = await commands_sent(raw, key_prefix, write)
    (refreshed,) = await commands_sent(raw, key_prefix, refresh)

    assert written[0].upper() == "EVALSHA" and written[2] == "3"  # three keys, in batch order
    assert refreshed[0].upper() == "EVALSHA" and refreshed[2] == "2"  # "a" once, and "b"
    expiries = {
        match.prefix_hash: match.expires_at for match in await index.lookup(ALICE, [digest("a"), digest("b")], NOW)
    }
    assert expiries == {digest("a"): NOW + 3600, digest("b"): NOW + 400}


async def test_a_key_lives_in_redis_as_long_as_its_entry_plus_the_grace_and_never_shorter(
    index: RedisIndex, raw: aioredis.Redis
) -> None:
    key = await _only_key(index, raw, entry("a", NOW + 300))
    first = await raw.pttl(key)
    assert (300 + GRACE) * 1000 - 10_000 < first <= (300 + GRACE) * 1000

    await index.write([entry("a", NOW + 100)], NOW)  # a shorter write: the entry keeps its expiry
    assert await raw.pttl(key) > first - 10_000
    await index.refresh([Refresh(ALICE, digest("a"), NOW + 3600)], NOW)
    assert await raw.pttl(key) > (3600 + GRACE) * 1000 - 10_000


async def test_redis_removes_an_expired_entry_by_itself(redis_url: str, raw: aioredis.Redis, key_prefix: str) -> None:
    index = await open_index(redis_url, expiry_grace=0.0)
    try:
        await index.write([entry("brief", NOW + 0.05)], NOW)
        await asyncio.sleep(0.2)
        assert await keys_of(raw, key_prefix) == []
        assert await index.sweep(NOW + 10**6) == 0  # nothing left for the sweep
    finally:
        await index.aclose()


async def test_with_a_retention_an_expired_entry_stays_for_the_diagnosis(
    redis_url: str, raw: aioredis.Redis, key_prefix: str
) -> None:
    index = await open_index(redis_url, expiry_grace=0.0, retention=3600.0)
    try:
        await index.write([entry("brief", NOW + 0.05)], NOW)
        await asyncio.sleep(0.2)
        (key,) = await keys_of(raw, key_prefix)
        assert await raw.pttl(key) > 3000 * 1000
        assert (await index.recall(ALICE, [digest("brief")], [], NOW + 1)).expired == {digest("brief")}
        assert await index.lookup(ALICE, [digest("brief")], NOW + 1) == []
    finally:
        await index.aclose()


async def test_an_entry_written_already_expired_leaves_no_key(
    index: RedisIndex, raw: aioredis.Redis, key_prefix: str
) -> None:
    await index.write([entry("stale", NOW - GRACE - 1)], NOW)

    assert await keys_of(raw, key_prefix) == []


async def test_a_key_of_another_type_in_the_way_fails_as_index_unavailable(
    index: RedisIndex, raw: aioredis.Redis, key_prefix: str
) -> None:
    key = await _only_key(index, raw, entry("a"))
    await raw.delete(key)
    await raw.rpush(key, "not an entry")

    with pytest.raises(IndexUnavailable, match="WRONGTYPE"):
        await index.write([entry("a")], NOW)


async def test_a_value_that_is_no_entry_is_a_miss(index: RedisIndex, raw: aioredis.Redis) -> None:
    key = await _only_key(index, raw, entry("a"))
    await raw.set(key, "not an entry")

    assert await index.lookup(ALICE, [digest("a")], NOW) == []
    await index.write([entry("a")], NOW)  # and a write replaces it
    assert len(await index.lookup(ALICE, [digest("a")], NOW)) == 1


async def test_a_server_that_never_answers_is_unavailable_within_the_socket_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never replies
        port = silent.getsockname()[1]
        with pytest.raises(IndexUnavailable, match="connect"):
            await open_index(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2, connect_timeout=0.2)


async def test_more_calls_at_once_than_connections_wait_for_one_instead_of_failing(redis_url: str) -> None:
    index = await open_index(redis_url, max_connections=2)
    scopes = [CacheScope(f"tenant-{n}", "qwen", "v1") for n in range(40)]
    try:
        await index.write([entry("a", scope=scope) for scope in scopes], NOW)  # 40 script calls at once
        found = await asyncio.gather(*(index.lookup(scope, [digest("a")], NOW) for scope in scopes))
        assert all(len(matches) == 1 for matches in found)
    finally:
        await index.aclose()


async def test_a_closed_index_refuses_every_call(index: RedisIndex) -> None:
    await index.aclose()

    with pytest.raises(IndexUnavailable, match="closed"):
        await index.lookup(ALICE, [digest("a")], NOW)


async def _only_key(index: RedisIndex, raw: aioredis.Redis, written: IndexEntry) -> bytes:
    await index.write([written], NOW)
    (key,) = [key async for key in raw.scan_iter(match=f"*{written.prefix_hash.hex()}")]
    return key


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Redis of this test's own that speaks only TLS (a certificate for 127.0.0.1 from a test CA);
    yields its port and the CA's certificate file."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed to start a TLS Redis")
        pytest.skip("redis-server is needed to start a TLS Redis")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(ca_file := tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(cert_file := tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(key_file := tmp_path / "key.pem")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(ca_file),
            "--tls-auth-clients",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca_file), socket_timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port, ca_file
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_rediss_url_speaks_tls(tls_redis: tuple[int, Path]) -> None:
    port, ca_file = tls_redis
    index = await open_index(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}")
    try:
        await index.write([entry("a")], NOW)
        assert len(await index.lookup(ALICE, [digest("a")], NOW)) == 1
    finally:
        await index.aclose()

    with pytest.raises(IndexUnavailable):  # the same server, without TLS
        await open_index(f"redis://127.0.0.1:{port}/0")
