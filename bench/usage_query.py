"""Micro-benchmark: the usage query (``ControlStore.usage``) and the dashboard's figures over a large ledger.

What a dashboard page or ``GET /v1/usage`` costs the control store. Each backend gets the same
ledger: ``--rows`` requests spread over 30 days, 50 principals (one key each) and 4 models, with
miss reasons and count drift. The table gives the median and worst of ``--iterations`` runs of
each query, in milliseconds, from the caller's side: the whole ledger (an operator's overview),
one principal's (a tenant's ``/v1/usage``), the overview's figures computed from the groups, and a
key lookup made while the whole ledger is being summed (what a request with a new key waits).

    .venv/bin/python bench/usage_query.py                   # sqlite and postgres, 200,000 rows
    .venv/bin/python bench/usage_query.py --rows 1000000 --backends postgres

PostgreSQL gets a fresh database (dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from cachegate.dashboard import figures
from cachegate.store.base import MISS_REASONS, ControlStore, LedgerRow, UsageQuery
from cachegate.store.factory import open_store

BATCH = 5000
DAYS = 30
PRINCIPALS = 50
MODELS = ("qwen3-8b", "qwen3-32b", "llama-70b", "mistral-7b")


def ledger(rows: int, now: datetime) -> list[LedgerRow]:
    reasons = (*MISS_REASONS, None, None, None)
    return [
        LedgerRow(
            at=now - timedelta(seconds=n * DAYS * 86400 // rows),
            principal_id=f"prn_{n % PRINCIPALS}",
            key_id=f"key_{n % PRINCIPALS}",
            model=MODELS[n % len(MODELS)],
            status=200,
            streaming=n % 2 == 0,
            prompt_tokens=2000 + n % 500,
            completion_tokens=100,
            cache_read_tokens=1000 if n % 3 else 0,
            cache_creation_5m_tokens=500 if n % 3 == 0 else 0,
            cache_creation_1h_tokens=100,
            cache_creation_24h_tokens=0,
            upstream_cached_tokens=None,
            cost=Decimal("0.0012345"),
            list_cost=Decimal("0.0025"),
            latency_ms=40.0,
            degraded=n % 97 == 0,
            counted_prompt_tokens=2000 + n % 500 + n % 3,
            row_id=f"bench-{n}",
            miss_reason=reasons[n % len(reasons)],
        )
        for n in range(rows)
    ]


@asynccontextmanager
async def postgres_url(admin_dsn: str) -> AsyncIterator[str]:
    name = f"cachegate_usage_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def sqlite_url() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="cachegate-usage-bench-") as folder:
        yield f"sqlite:///{Path(folder) / 'control.db'}"


async def timed(work: Callable[[], Awaitable[Any]], iterations: int) -> tuple[float, float]:
    await work()  # warm-up
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


async def bench(store: ControlStore, rows: list[LedgerRow], iterations: int) -> list[tuple[str, float, float, int]]:
    for start in range(0, len(rows), BATCH):
        await store.append_ledger(rows[start : start + BATCH])
    since = datetime.now(UTC) - timedelta(days=DAYS)
    everyone = await store.usage(UsageQuery(since=since))

    async def overview_figures() -> None:
        days = figures.days_between(since.date(), datetime.now(UTC).date())
        figures.per_day(everyone, days)
        figures.by(everyone, lambda g: g.principal_id)
        figures.by(everyone, lambda g: g.model)

    async def lookup_during_report() -> None:
        """A key lookup (what a request with a new key waits for) while the whole ledger is summed."""
        report = asyncio.create_task(store.usage(UsageQuery(since=since)))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await store.find_api_key(b"x" * 32)
        lookups.append((time.perf_counter() - started) * 1000)
        await report

    lookups: list[float] = []
    for _ in range(iterations):
        await lookup_during_report()
    results = [("key lookup meanwhile", statistics.median(lookups), max(lookups), 0)]
    for name, work, groups in (
        ("whole ledger", lambda: store.usage(UsageQuery(since=since)), len(everyone)),
        ("one principal", lambda: store.usage(UsageQuery(since=since, principal_id="prn_7")), None),
        ("overview figures", overview_figures, len(everyone)),
    ):
        median, worst = await timed(work, iterations)
        count = groups if groups is not None else len(await store.usage(UsageQuery(since=since, principal_id="prn_7")))
        results.append((name, median, worst, count))
    return results


async def main(arguments: argparse.Namespace) -> None:
    rows = ledger(arguments.rows, datetime.now(UTC))
    print(f"{arguments.rows:,} ledger rows over {DAYS} days, {PRINCIPALS} principals, {len(MODELS)} models")
    print(f"{'backend':10} {'query':18} {'groups':>7} {'median ms':>10} {'worst ms':>10}")
    urls = {"sqlite": sqlite_url, "postgres": lambda: postgres_url(arguments.pg_dsn)}
    for backend in arguments.backends:
        async with urls[backend]() as url:
            store = await open_store(url)
            try:
                await store.migrate()
                for name, median, worst, groups in await bench(store, rows, arguments.iterations):
                    print(f"{backend:10} {name:18} {groups:>7} {median:>10.1f} {worst:>10.1f}")
            finally:
                await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    asyncio.run(main(parser.parse_args()))
