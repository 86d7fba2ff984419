"""Per-key rate limits on the request path (SPEC §13): admission, the headers, the debit when billed.

A key without limits costs one dict lookup. A limited key's request is checked before its route
runs: admitted, it carries its dialect's rate-limit headers (the application adds them to
whatever response the route sends, so no route knows of them); refused, it gets a 429 with
``retry-after`` and the same headers. Routes that are not billed (``count_tokens``, the model
list) only read the limits for their headers and are never refused. When a request is billed,
its input tokens as Anthropic counts them (uncached + cache creation; reads are free) are debited
from its key's bucket (``core/rate_limits.py`` says why then, not at admission).

The limiter is in process, or shared through Redis (``rate_limits.redis_url``). A Redis that does
not answer fails open: the request goes through without a check or headers, the failure is
counted (``cachegate_rate_limiter_unavailable_total``) and logged once per outage, and for the
next ``retry_seconds`` no request waits for it (docs/faults.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from cachegate.asgi import Headers, Refusal
from cachegate.config import RateLimitsConfig
from cachegate.core.rate_limits import Decision, Limits, anthropic_headers, input_tokens_of, openai_headers
from cachegate.gateway import metrics
from cachegate.gateway.catalog import CatalogCache
from cachegate.gateway.routing import Dialect
from cachegate.limiter.base import RateLimiter, RateLimiterUnavailable
from cachegate.limiter.memory import MemoryRateLimiter
from cachegate.limiter.redis import RedisRateLimiter
from cachegate.store.base import ApiKey, LedgerRow, RateLimit

log = logging.getLogger(__name__)


def rate_limiter(config: RateLimitsConfig) -> RateLimiter:
    """The limiter the configuration names; nothing is connected yet (a Redis that is down must not
    keep the gateway from starting)."""
    if config.redis_url is None:
        return MemoryRateLimiter()
    return RedisRateLimiter.from_url(config.redis_url, timeout=config.redis_timeout_seconds)


class RateLimits:
    def __init__(
        self,
        catalog: CatalogCache,
        limiter: RateLimiter,
        *,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self.limiter = limiter
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._down_until = 0.0  # while the shared limiter is down: no request waits for it before this
        self._down = False

    async def check(self, key: ApiKey, dialect: Dialect, *, take: bool) -> tuple[Headers, Refusal | None]:
        """The headers of this request's response, and the refusal to answer with if it is over a limit."""
        limit = self._catalog.current.rate_limits.get(key.id)
        if limit is None:
            return [], None
        limits = _limits(limit)
        if not limits.any:
            return [], None
        now = self._clock()
        if now < self._down_until:
            metrics.RATE_LIMITER_UNAVAILABLE.inc()
            return [], None
        try:
            decision = await self.limiter.admit(key.id, limits, now, take=take)
        except RateLimiterUnavailable as exc:
            self._failed(exc, now)
            return [], None
        if self._down:
            self._down = False
            log.warning("the rate limiter answers again: rate limits are enforced")
        headers = openai_headers(decision) if dialect is Dialect.OPENAI else anthropic_headers(decision, now)
        if decision.admitted:
            return headers, None
        return headers, _refusal(decision)

    def _failed(self, exc: RateLimiterUnavailable, now: float) -> None:
        metrics.RATE_LIMITER_UNAVAILABLE.inc()
        self._down_until = now + self._retry_seconds
        if not self._down:
            self._down = True
            log.error("rate limits are not enforced (requests go through) while the limiter is down: %s", exc)

    # LedgerObserver

    def billed(self, row: LedgerRow) -> None:
        limit = self._catalog.current.rate_limits.get(row.key_id)
        if limit is None or limit.input_tokens_per_minute is None:
            return
        self.limiter.debit(
            row.key_id, _limits(limit), input_tokens_of(row.prompt_tokens, row.cache_read_tokens), self._clock()
        )

    def settled(self, rows: Sequence[LedgerRow]) -> None:
        """Nothing to do: a debit is final."""


def _limits(limit: RateLimit) -> Limits:
    return Limits(limit.requests_per_minute, limit.input_tokens_per_minute)


def _refusal(decision: Decision) -> Refusal:
    """429 saying which limit is reached and when to try again (also in ``retry-after``)."""
    which = [
        name
        for name, reading in (("requests", decision.requests), ("input tokens", decision.input_tokens))
        if reading is not None and reading.remaining < 1
    ]
    metrics.labelled(metrics.RATE_LIMITED, "input_tokens" if "input tokens" in which else "requests").inc()
    return Refusal(
        429,
        f"rate limit reached for this API key: {' and '.join(which)} per minute;"
        f" try again in {decision.retry_after_header} s",
        "rate_limit_exceeded",
        type_="rate_limit_error",
    )
