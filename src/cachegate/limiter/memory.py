"""The rate limiter in process: each replica keeps its own buckets (the default, SPEC §13)."""

from __future__ import annotations

from cachegate.core.rate_limits import Bucket, Decision, Limits, admit, debited


class MemoryRateLimiter:
    """Buckets per key id in a dict: two floats per limit, for the keys that have limits."""

    def __init__(self) -> None:
        self._requests: dict[str, Bucket] = {}
        self._input_tokens: dict[str, Bucket] = {}

    async def admit(self, key_id: str, limits: Limits, now: float, *, take: bool = True) -> Decision:
        admission = admit(limits, self._requests.get(key_id), self._input_tokens.get(key_id), now, take=take)
        if admission.requests is not None:
            self._requests[key_id] = admission.requests
        if admission.input_tokens is not None:
            self._input_tokens[key_id] = admission.input_tokens
        return admission.decision

    def debit(self, key_id: str, limits: Limits, input_tokens: int, now: float) -> None:
        capacity = limits.input_tokens_per_minute
        if capacity is not None and input_tokens > 0:
            self._input_tokens[key_id] = debited(self._input_tokens.get(key_id), capacity, input_tokens, now)

    async def aclose(self) -> None:
        self._requests.clear()
        self._input_tokens.clear()
