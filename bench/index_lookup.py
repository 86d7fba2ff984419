"""Micro-benchmark: one cache index lookup (one scope, 20 candidate prefix hashes) on each backend,
and what a miss adds (SPEC §14): the recall of its expired entries and trails, and a commit's
write with the request's trails beside one without.

The lookup every cached request makes before it goes upstream; the recall only a request whose
deepest breakpoint misses makes, beside its counting. Each backend gets the same data:
``--entries`` live entries spread over 100 scopes, of which the measured scope holds every other one
of its 20 candidates (10 hits, 10 misses). Lookups run one after the other on one event loop, after a
warm-up, and the table gives their latency percentiles in microseconds, measured from the caller's
side (``await index.lookup(...)``), so it includes the client library and, for the servers, the round trip.
At the largest size, the recall asks for the 10 candidates that missed (5 of them expired) and the
scope's 2 trail keys (64 sections each); a write is 2 entries, with or without those 2 trails.

    .venv/bin/python bench/index_lookup.py                  # sqlite, postgres and redis in one run
    .venv/bin/python bench/index_lookup.py --iterations 20000 --entries 100000
    .venv/bin/python bench/index_lookup.py --entries 1000000 10000000   # each size on top of the last

PostgreSQL gets a fresh database (dropped at the end); Redis a fresh key prefix (deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis

from cachegate.core.diagnosis import DIGEST_BYTES, LATEST_KEY
from cachegate.core.types import CacheScope, IndexEntry, Trail, TtlTier
from cachegate.index.base import CacheIndex
from cachegate.index.factory import open_index

CANDIDATES = 20
SCOPES = 100
BATCH = 5000
MEASURED = CacheScope("principal-0", "qwen3", "sha256:bench")


def prefix_hash(scope: CacheScope, n: int) -> bytes:
    return hashlib.sha256(f"{scope.principal}/{n}".encode()).digest()


async def fill(index: CacheIndex, start: int, entries: int, now: float) -> None:
    """Live entries ``start`` up to ``entries`` over ``SCOPES`` scopes, written in batches (never all
    in memory: ten million entries are gigabytes as objects); the first batch gives the measured
    scope its even candidates."""
    if start == 0:
        measured = [
            IndexEntry(MEASURED, prefix_hash(MEASURED, n), 1024 * (n + 1), TtlTier.ONE_HOUR, now + 3600)
            for n in range(0, CANDIDATES, 2)
        ]
        expired = [  # half of the measured scope's misses have expired
            IndexEntry(MEASURED, prefix_hash(MEASURED, n), 1024 * (n + 1), TtlTier.FIVE_MINUTES, now - 60)
            for n in range(1, CANDIDATES, 4)
        ]
        await index.write(measured + expired, now, trails(now))
        start = len(measured)
    scopes = [CacheScope(f"principal-{n}", "qwen3", "sha256:bench") for n in range(SCOPES)]
    for first in range(start, entries, BATCH):
        scope = scopes[(first // BATCH) % SCOPES]  # a batch per scope: one script call on Redis, as a request's
        await index.write(
            [
                IndexEntry(scope, prefix_hash(scope, CANDIDATES + n), 2048, TtlTier.ONE_HOUR, now + 3600)
                for n in range(first, min(first + BATCH, entries))
            ],
            now,
        )


def trails(now: float) -> list[Trail]:
    sections = bytes(range(256)) * (64 * DIGEST_BYTES // 256)
    return [Trail(MEASURED, key, b"anchor-1", sections, now + 3600) for key in (b"anchor:anchor-1", LATEST_KEY)]


async def timed(iterations: int, operation: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(min(1000, iterations)):  # warm-up: connections, caches, prepared statements
        await operation()
    latencies = []
    for _ in range(iterations):
        started = time.perf_counter()
        await operation()
        latencies.append((time.perf_counter() - started) * 1e6)
    return latencies


async def measure_miss_path(index: CacheIndex, iterations: int, now: float) -> dict[str, list[float]]:
    """The recall of a miss, and a commit's write with and without its trails."""
    unmatched = [prefix_hash(MEASURED, n) for n in range(1, CANDIDATES, 2)]
    keys = [trail.key for trail in trails(now)]
    recalled = await index.recall(MEASURED, unmatched, keys, now)
    assert len(recalled.expired) == CANDIDATES // 4 and len(recalled.trails) == 2, recalled
    written = [
        IndexEntry(MEASURED, prefix_hash(MEASURED, 1000 + n), 4096, TtlTier.FIVE_MINUTES, now + 300) for n in range(2)
    ]
    return {
        "recall": await timed(iterations, lambda: index.recall(MEASURED, unmatched, keys, now)),
        "write": await timed(iterations, lambda: index.write(written, now)),
        "write+trails": await timed(iterations, lambda: index.write(written, now, trails(now))),
    }


async def measure(index: CacheIndex, iterations: int, now: float) -> list[float]:
    candidates = [prefix_hash(MEASURED, n) for n in range(CANDIDATES)]
    for _ in range(min(1000, iterations)):  # warm-up: connections, caches, prepared statements
        await index.lookup(MEASURED, candidates, now)
    latencies = []
    for _ in range(iterations):
        started = time.perf_counter()
        found = await index.lookup(MEASURED, candidates, now)
        latencies.append((time.perf_counter() - started) * 1e6)
        assert len(found) == CANDIDATES // 2
    return latencies


@asynccontextmanager
async def sqlite_url() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="cachegate-bench-") as folder:
        yield f"sqlite:///{Path(folder) / 'index.db'}"


@asynccontextmanager
async def postgres_url(admin_dsn: str) -> AsyncIterator[str]:
    name = f"cachegate_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(admin_dsn)._replace(path=f"/{name}").geturl()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def redis_url(server_url: str) -> AsyncIterator[str]:
    prefix = f"cachegate-bench-{secrets.token_hex(4)}"
    try:
        yield f"{server_url}?key_prefix={prefix}"
    finally:
        client = aioredis.Redis.from_url(server_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await client.aclose()


async def run(arguments: argparse.Namespace) -> None:
    now = time.time()
    backends: dict[str, Callable[[], AsyncIterator[str]]] = {
        "sqlite": sqlite_url,
        "postgres": lambda: postgres_url(arguments.pg_dsn),
        "redis": lambda: redis_url(arguments.redis_url),
    }
    print(
        f"lookup of {CANDIDATES} candidates (10 hits) in one scope; {arguments.iterations} lookups each; microseconds"
    )
    print(f"{'backend':<10}{'entries':>12}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}{'fill s':>9}")
    miss_path: dict[str, dict[str, list[float]]] = {}
    for name in arguments.backends:
        async with backends[name]() as url:
            index = await open_index(url, retention=3600)  # as a default configuration opens it
            filled = 0
            try:
                for entries in sorted(arguments.entries):  # each size on top of the last: one fill in all
                    started = time.perf_counter()
                    await fill(index, filled, entries, now)
                    fill_seconds = time.perf_counter() - started
                    filled = entries
                    latencies = await measure(index, arguments.iterations, now)
                    cuts = statistics.quantiles(latencies, n=100)
                    print(
                        f"{name:<10}{entries:>12,}{cuts[49]:>10.0f}{cuts[89]:>10.0f}{cuts[98]:>10.0f}"
                        f"{statistics.fmean(latencies):>10.0f}{fill_seconds:>9.0f}",
                        flush=True,
                    )
                miss_path[name] = await measure_miss_path(index, arguments.iterations, now)
            finally:
                await index.aclose()
    print(f"\nthe miss path at {max(arguments.entries):,} entries; microseconds")
    print(f"{'backend':<10}{'operation':<14}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}")
    for name, results in miss_path.items():
        for operation, latencies in results.items():
            cuts = statistics.quantiles(latencies, n=100)
            print(
                f"{name:<10}{operation:<14}{cuts[49]:>10.0f}{cuts[89]:>10.0f}{cuts[98]:>10.0f}"
                f"{statistics.fmean(latencies):>10.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument(
        "--entries", type=int, nargs="+", default=[10_000], help="live entries in the index (all scopes); several: each"
    )
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres", "redis"])
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
