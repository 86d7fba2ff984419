"""Micro-benchmark: what budgets and rate limits cost a request before its route runs (SPEC §13).

The checks ``gateway/app.py`` makes for every billed request, timed from the caller's side, one
after the other on one event loop after a warm-up, in microseconds per check:

- a key with no budget and no limit (what every deployment without them pays);
- budgets: a key whose key and principal each have a day, month and total budget, with the spend
  of 10,000 other keys loaded (in memory: no store query);
- rate limits in process, and in Redis (one script call: the round trip to the server);
- the debit a billed request makes (in process).

    .venv/bin/python bench/limits_check.py
    .venv/bin/python bench/limits_check.py --iterations 50000 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import cast

import redis.asyncio as aioredis

from cachegate.core.budgets import KeyTotals, Windows
from cachegate.gateway.budgets import Budgets
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.ledger import LedgerWriter
from cachegate.gateway.rate_limits import RateLimits
from cachegate.gateway.routing import Dialect
from cachegate.limiter.base import RateLimiter
from cachegate.limiter.memory import MemoryRateLimiter
from cachegate.limiter.redis import RedisRateLimiter
from cachegate.store.base import (
    ApiKey,
    Budget,
    BudgetPeriod,
    BudgetSubject,
    Catalog,
    ControlStore,
    LedgerRow,
    RateLimit,
)

KEY = ApiKey("key_bench", "prn_bench", b"h" * 32, False, datetime.now(UTC), None)
FREE_KEY = ApiKey("key_free", "prn_free", b"f" * 32, False, datetime.now(UTC), None)
OTHER_KEYS = 10_000


def catalog() -> CatalogCache:
    budgets = tuple(
        Budget(subject, subject_id, period, Decimal("1000000"))
        for subject, subject_id in ((BudgetSubject.KEY, KEY.id), (BudgetSubject.PRINCIPAL, KEY.principal_id))
        for period in BudgetPeriod
    )
    limits = {KEY.id: RateLimit(KEY.id, requests_per_minute=10**9, input_tokens_per_minute=10**9)}
    cache = CatalogCache(cast(ControlStore, None), 60.0)
    cache.current = Catalog({}, {}, {}, budgets=budgets, rate_limits=limits)
    return cache


def billed_row() -> LedgerRow:
    return LedgerRow(
        datetime.now(UTC), KEY.principal_id, KEY.id, "m", 200, False, 2000, 50, 1500, 100, 0, 0, None,
        Decimal("0.0001"), Decimal("0.0002"), 1.0, False,
    )  # fmt: skip


async def timed(iterations: int, check: Callable[[], Awaitable[object] | object]) -> list[float]:
    samples = []
    for _ in range(iterations // 10):  # warm-up
        result = check()
        if isinstance(result, Awaitable):
            await result
    for _ in range(iterations):
        started = time.perf_counter_ns()
        result = check()
        if isinstance(result, Awaitable):
            await result
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def line(name: str, samples: list[float]) -> str:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    return f"{name:<44} {p50:>9.2f} {p99:>9.2f}"


async def main(iterations: int, redis_url: str) -> None:
    cache = catalog()
    ledger = LedgerWriter(cast(ControlStore, None), 60.0)
    budgets = Budgets(cast(ControlStore, None), cache, ledger, 60.0)
    windows = Windows.at(datetime.now(UTC))
    others = [KeyTotals(f"prn_{n}", f"key_{n}", Decimal("0.5"), Decimal("3"), Decimal("9")) for n in range(OTHER_KEYS)]
    budgets._spend.load([*others, KeyTotals(KEY.principal_id, KEY.id, *(Decimal("1"),) * 3)], windows)
    memory = RateLimits(cache, MemoryRateLimiter())
    row = billed_row()

    print(f"{'check (µs per request)':<44} {'p50':>9} {'p99':>9}")
    print(line("no budget, no limit: budgets", await timed(iterations, lambda: budgets.check(FREE_KEY))))
    print(
        line(
            "no budget, no limit: rate limits",
            await timed(iterations, lambda: memory.check(FREE_KEY, Dialect.OPENAI, take=True)),
        )
    )
    print(line("budgets: 6 (key and principal x 3 periods)", await timed(iterations, lambda: budgets.check(KEY))))
    print(
        line(
            "rate limits in process (+ OpenAI headers)",
            await timed(iterations, lambda: memory.check(KEY, Dialect.OPENAI, take=True)),
        )
    )
    print(line("debit when billed, in process", await timed(iterations, lambda: memory.billed(row))))
    print(line("budget spend counted when billed", await timed(iterations, lambda: budgets.billed(row))))

    prefix = f"cachegate-bench-{secrets.token_hex(4)}"
    limiter: RateLimiter = RedisRateLimiter.from_url(f"{redis_url}?key_prefix={prefix}")
    shared = RateLimits(cache, limiter)
    try:
        print(
            line(
                "rate limits in Redis (one EVALSHA)",
                await timed(iterations, lambda: shared.check(KEY, Dialect.OPENAI, take=True)),
            )
        )
    finally:
        await limiter.aclose()
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.iterations, arguments.redis))
