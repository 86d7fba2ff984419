"""Micro-benchmark: the control store's ledger append (``ControlStore.append_ledger``) and key lookup.

Every billed request becomes one ledger row, appended in the ledger writer's batches together with
its spend totals (SPEC §10, §13); a key not in the gateway's memory is looked up by its hash. The
table gives latency percentiles in microseconds from the caller's side, after a warm-up, on a store
that already holds ``--rows`` rows: appends of one row and of ``--batch`` rows (each row a new id,
spread over 50 keys), and ``find_api_key``.

    .venv/bin/python bench/ledger_append.py                     # sqlite and postgres
    .venv/bin/python bench/ledger_append.py --iterations 5000 --backends sqlite

PostgreSQL gets a fresh database (dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from usage_query import ledger, postgres_url, sqlite_url

from cachegate.store.base import ControlStore
from cachegate.store.factory import open_store
from cachegate.store.keys import hash_secret


async def timed(work: Callable[[int], Awaitable[Any]], iterations: int) -> list[float]:
    for n in range(min(200, iterations)):  # warm-up: statement caches, pages
        await work(-1 - n)
    samples = []
    for n in range(iterations):
        start = time.perf_counter()
        await work(n)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


async def bench(store: ControlStore, arguments: argparse.Namespace) -> list[tuple[str, list[float]]]:
    now = datetime.now(UTC)
    rows = ledger(arguments.rows, now)
    for start in range(0, len(rows), 5000):
        await store.append_ledger(rows[start : start + 5000])
    template = rows[: arguments.batch]
    principal = await store.create_principal("bench")
    _, secret = await store.create_api_key(principal.id)
    secret_hash = hash_secret(secret)
    counter = iter(range(10**9))

    async def append(size: int) -> None:
        batch = [dataclasses.replace(row, row_id=f"new-{next(counter)}", at=now) for row in template[:size]]
        await store.append_ledger(batch)

    return [
        ("append 1 row", await timed(lambda n: append(1), arguments.iterations)),
        (f"append {arguments.batch} rows", await timed(lambda n: append(arguments.batch), arguments.iterations // 5)),
        ("find_api_key", await timed(lambda n: store.find_api_key(secret_hash), arguments.iterations)),
    ]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(arguments: argparse.Namespace) -> None:
    print(f"ledger of {arguments.rows:,} rows; microseconds")
    print(f"{'backend':10} {'operation':18} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}")
    urls = {"sqlite": sqlite_url, "postgres": lambda: postgres_url(arguments.pg_dsn)}
    for backend in arguments.backends:
        async with urls[backend]() as url:
            store = await open_store(url)
            try:
                await store.migrate()
                for name, samples in await bench(store, arguments):
                    p50, p90, p99 = (percentile(samples, f) for f in (0.5, 0.9, 0.99))
                    print(
                        f"{backend:10} {name:18} {p50:>8.0f} {p90:>8.0f} {p99:>8.0f} {statistics.fmean(samples):>8.0f}"
                    )
            finally:
                await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    asyncio.run(main(parser.parse_args()))
