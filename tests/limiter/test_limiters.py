"""The rate limiters' contract, in process and in Redis alike, on a clock the test sets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cachegate.core.rate_limits import Limits, Reading
from cachegate.limiter.base import RateLimiter, RateLimiterUnavailable
from cachegate.limiter.memory import MemoryRateLimiter
from cachegate.limiter.redis import RedisRateLimiter

from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

NOW = 1_764_700_000.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        made: RateLimiter = MemoryRateLimiter()
        yield made
        await made.aclose()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = server.fresh_prefix()
    made = RedisRateLimiter.from_url(server.index_url(prefix))
    yield made
    await made.aclose()
    server.drop(prefix)


async def test_requests_per_minute_admit_then_refuse_then_refill(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=2)

    decisions = [await limiter.admit("key_a", limits, NOW) for _ in range(3)]

    assert [d.admitted for d in decisions] == [True, True, False]
    assert decisions[1].requests == Reading(2, 0, 60.0)
    assert decisions[2].retry_after == 30.0
    assert (await limiter.admit("key_b", limits, NOW)).admitted  # each key its own bucket
    assert (await limiter.admit("key_a", limits, NOW + 30)).admitted


async def test_a_read_takes_nothing(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=1)
    for _ in range(3):
        assert (await limiter.admit("key_a", limits, NOW, take=False)).requests == Reading(1, 1, 0.0)
    assert (await limiter.admit("key_a", limits, NOW)).admitted


async def test_input_tokens_are_debited_as_billed_and_refuse_once_exhausted(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=100, input_tokens_per_minute=600)
    assert (await limiter.admit("key_a", limits, NOW)).admitted

    limiter.debit("key_a", limits, 900, NOW)
    await _settle(limiter)
    refused = await limiter.admit("key_a", limits, NOW + 1)

    assert not refused.admitted
    assert refused.input_tokens == Reading(600, 0, (600 + 290) / 10)
    assert refused.retry_after == pytest.approx(29.1)
    assert refused.requests == Reading(100, 100, 0.0)  # refilled in the second, and the refused one took none
    assert (await limiter.admit("key_a", limits, NOW + 30.2)).admitted


async def _settle(limiter: RateLimiter) -> None:
    """Wait for a queued debit (Redis's are tasks)."""
    if isinstance(limiter, RedisRateLimiter):
        await asyncio.gather(*limiter._debits)


async def test_a_redis_that_is_down_says_so() -> None:
    limiter = RedisRateLimiter.from_url("redis://127.0.0.1:9/0", timeout=0.2)
    try:
        with pytest.raises(RateLimiterUnavailable):
            await limiter.admit("key_a", Limits(requests_per_minute=1), NOW)
        limiter.debit("key_a", Limits(input_tokens_per_minute=10), 5, NOW)  # logged, never raised
    finally:
        await limiter.aclose()
