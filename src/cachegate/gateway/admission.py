"""Requests in flight: the per-key concurrency limit, what a shutdown waits for, and how many there are.

uvicorn's ``limit_concurrency`` bounds the whole server (a 503 in plain text, before any route);
it cannot tell one tenant from another, so the per-key limit is cachegate's own: one tenant's
burst cannot take every slot, and its refusal is a 429 in the client's own error dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from cachegate.asgi import Refusal


class InFlight:
    def __init__(self, per_key: int | None) -> None:
        self._limit = per_key
        self._per_key: dict[str, int] = {}
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def admit(self, key_id: str) -> Iterator[None]:
        """Count one request of ``key_id`` while it runs; 429 if the key has its limit in flight already."""
        count = self._per_key.get(key_id, 0)
        if self._limit is not None and count >= self._limit:
            raise Refusal(
                429,
                f"too many concurrent requests for this API key (limit {self._limit}); retry when one has finished",
                "concurrency_limit_exceeded",
                type_="rate_limit_error",
            )
        self._per_key[key_id] = count + 1
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            left = self._per_key[key_id] - 1
            if left:
                self._per_key[key_id] = left
            else:
                del self._per_key[key_id]
                if not self._per_key:
                    self._idle.set()

    def count(self) -> int:
        """Requests in flight, of every key (the ledger journal's group commit waits on it, docs/ledger.md)."""
        return self._count

    async def idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()
