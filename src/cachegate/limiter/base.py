"""The rate limiter port (SPEC §13): per-key token buckets, in process or shared through Redis.

The arithmetic is ``core/rate_limits.py``; an adapter only keeps the buckets' states. In process
(``memory.py``) each replica limits on its own; in Redis (``redis.py``) every replica pointing at
one server shares one bucket per key, each check one atomic script call.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cachegate.core.errors import CachegateError
from cachegate.core.rate_limits import Decision, Limits


class RateLimiterUnavailable(CachegateError):
    """The limiter's backend could not be reached: the gateway lets the request through (fails open)."""


@runtime_checkable
class RateLimiter(Protocol):
    async def admit(self, key_id: str, limits: Limits, now: float, *, take: bool = True) -> Decision:
        """Check one request of ``key_id`` at ``now`` against ``limits``; an admitted request takes
        one request from its bucket if ``take`` (a route that is not billed only reads)."""

    def debit(self, key_id: str, limits: Limits, input_tokens: int, now: float) -> None:
        """Take a billed request's input tokens (uncached + cache creation) from its key's bucket, at
        once or queued: it is called as the request is billed, which must not wait, and never raises."""

    async def aclose(self) -> None: ...
