"""The I/O around the pure classification (SPEC §6, §7): one index lookup, counting, the commit.

``core.classify`` decides from plain inputs; this module fetches those inputs (the index
lookup, the token counts) and carries out the decision (writes before the response's last
byte, refreshes coalesced in the background). Every failure here degrades — the request is
served with zeros and ``cache_degraded`` — and never fails the request (SPEC §11).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from cachegate.background import Periodic
from cachegate.core.classify import blocks_to_count, blocks_to_verify, decide, deepest_hit, lookup_candidates
from cachegate.core.types import CacheScope, CacheTariff, Classification, IndexEntry, ParsedPrompt, Refresh
from cachegate.gateway import metrics
from cachegate.index.base import CacheIndex, IndexUnavailable
from cachegate.tokens.base import TokenCounter, TokenCountError

log = logging.getLogger(__name__)


def cache_scope(principal: str, alias: str, counter: TokenCounter) -> CacheScope | None:
    """The request's cache scope (SPEC §7.1), built from the counter's version of this moment; None
    (the request degrades) while the counter does not know its version, e.g. a tokenizer service
    not reached since start."""
    try:
        return CacheScope(principal, alias, counter.tokenizer_version)
    except TokenCountError as exc:
        metrics.labelled(metrics.DEGRADED, "token_counter").inc()
        log.warning("no tokenizer version, serving uncached: %s", exc)
        return None


class CacheClassifier:
    def __init__(self, index: CacheIndex, commit_deadline: float, refresh_interval: float = 1.0) -> None:
        self._index = index
        self._commit_deadline = commit_deadline
        self.refreshes = RefreshQueue(index, refresh_interval)

    async def classify(
        self,
        scope: CacheScope,
        prompt: ParsedPrompt,
        body: Mapping[str, Any],
        tariff: CacheTariff,
        counter: TokenCounter,
        now: float,
    ) -> Classification:
        if not prompt.breakpoints:
            return Classification()
        try:
            matches = await self._index.lookup(scope, lookup_candidates(prompt), now)
        except IndexUnavailable as exc:
            metrics.labelled(metrics.DEGRADED, "index").inc()
            log.warning("cache index lookup failed, serving uncached: %s", exc)
            return Classification.degraded_zeros()
        hit = deepest_hit(prompt, matches)
        if not blocks_to_count(prompt, hit):
            # Every breakpoint is cached: nothing to count, so nothing to check the hit against.
            return decide(scope, prompt, hit, {}, tariff, now)
        try:
            # One rendering counts the new breakpoints and checks every match (core/classify.py).
            counts = await counter.count(body, prompt, blocks_to_verify(prompt, matches))
        except TokenCountError as exc:
            metrics.labelled(metrics.DEGRADED, "token_counter").inc()
            log.warning("token count failed, serving uncached: %s", exc)
            return Classification.degraded_zeros()
        if counts.tokenizer_version not in (None, scope.tokenizer_version):
            # The counter's version changed since the scope was built: these counts are not this scope's.
            metrics.labelled(metrics.DEGRADED, "token_counter").inc()
            log.warning("the tokenizer version changed while counting, serving uncached")
            return Classification.degraded_zeros()
        metrics.labelled(metrics.TOKEN_COUNTS, counts.method).inc()
        verified = deepest_hit(prompt, matches, counts.cumulative, counts.dropped)
        if verified != hit:
            metrics.STALE_HITS.inc()
            hit = verified
        classification = decide(scope, prompt, hit, counts.cumulative, tariff, now, counts.dropped)
        classification.counted_total = counts.total
        return classification

    async def commit(self, writes: list[IndexEntry]) -> bool:
        """Write new entries within the commit deadline; returns whether they landed."""
        if not writes:
            return True
        try:
            await asyncio.wait_for(self._index.write(writes, time.time()), self._commit_deadline)
        except (IndexUnavailable, TimeoutError) as exc:
            metrics.labelled(metrics.COMMITS, "error").inc()
            log.warning("cache index commit failed: %s", exc.__class__.__name__)
            return False
        metrics.labelled(metrics.COMMITS, "ok").inc()
        return True


class RefreshQueue:
    """Expiry refreshes need no ordering (SPEC §7.4): coalesce them and write in batches."""

    def __init__(self, index: CacheIndex, interval: float, max_pending: int = 50_000) -> None:
        self._index = index
        self._max_pending = max_pending
        self._pending: dict[tuple[CacheScope, bytes], Refresh] = {}
        self._periodic = Periodic("cache refresh", interval, self.flush)

    def add(self, refresh: Refresh) -> None:
        key = (refresh.scope, refresh.prefix_hash)
        known = self._pending.get(key)
        if known is None or known.expires_at < refresh.expires_at:
            if known is None and len(self._pending) >= self._max_pending:
                metrics.REFRESHES_DROPPED.inc()
                return
            self._pending[key] = refresh

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        try:
            await self._index.refresh(batch, time.time())
        except IndexUnavailable as exc:
            # Losing a refresh only shortens an entry's life: a cache, not a ledger.
            log.warning("dropped %d cache refreshes: %s", len(batch), exc)
            metrics.REFRESHES_DROPPED.inc(len(batch))
