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
from collections.abc import Mapping, Sequence
from typing import Any

from cachegate.background import Periodic
from cachegate.core.classify import (
    Hit,
    blocks_to_count,
    blocks_to_verify,
    decide,
    deepest_hit,
    lookup_candidates,
    matched_blocks,
)
from cachegate.core.diagnosis import Outline, diagnose, needs_recall, outline, trails_to_write
from cachegate.core.types import (
    CacheMiss,
    CacheScope,
    CacheTariff,
    Classification,
    IndexEntry,
    IndexMatch,
    ParsedPrompt,
    Recall,
    Refresh,
    Trail,
)
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
        client_messages: Sequence[int | None] | None = None,
    ) -> Classification:
        """The split, the index work, and why the deepest breakpoint did not read (SPEC §6, §14).

        ``client_messages`` maps each chat message to the client's own (a translated request's),
        so that a changed block is named as the client sent it.
        """
        if not prompt.breakpoints:
            return Classification()
        candidates = lookup_candidates(prompt)
        try:
            matches = await self._index.lookup(scope, candidates, now)
        except IndexUnavailable as exc:
            metrics.labelled(metrics.DEGRADED, "index").inc()
            log.warning("cache index lookup failed, serving uncached: %s", exc)
            return Classification.degraded_zeros()
        hit = deepest_hit(prompt, matches)
        sections: Outline | None = None
        recall: asyncio.Task[Recall | None] | None = None
        if needs_recall(prompt, hit):
            # Only on a miss, and beside the counting: one more round trip, seldom a longer wait.
            sections = outline(prompt, body.get("messages") or (), client_messages)
            matched = {match.prefix_hash for match in matches}
            unmatched = [digest for digest in candidates if digest not in matched]
            recall = asyncio.create_task(self._recall(scope, unmatched, sections.keys, now))
        try:
            classification, hit = await self._decide(scope, prompt, body, tariff, counter, now, matches, hit)
            if classification.miss is None and needs_recall(prompt, hit):
                sections = sections or outline(prompt, body.get("messages") or (), client_messages)
                classification.miss = await self._diagnose(prompt, sections, matches, hit, recall)
                classification.undiagnosed = classification.miss is None
        finally:
            if recall is not None and not recall.done():
                recall.cancel()
        if classification.writes:
            sections = sections or outline(prompt, body.get("messages") or (), client_messages)
            expires_at = max(entry.expires_at for entry in classification.writes)
            classification.trails = trails_to_write(scope, prompt, sections, expires_at)
        return classification

    async def _decide(
        self,
        scope: CacheScope,
        prompt: ParsedPrompt,
        body: Mapping[str, Any],
        tariff: CacheTariff,
        counter: TokenCounter,
        now: float,
        matches: list[IndexMatch],
        hit: Hit | None,
    ) -> tuple[Classification, Hit | None]:
        """The decision, and the hit it read (None: nothing, or the request degraded)."""
        if not blocks_to_count(prompt, hit):
            # Every breakpoint is cached: nothing to count, so nothing to check the hit against.
            return decide(scope, prompt, hit, {}, tariff, now), hit
        try:
            # One rendering counts the new breakpoints and checks every match (core/classify.py).
            counts = await counter.count(body, prompt, blocks_to_verify(prompt, matches))
        except TokenCountError as exc:
            metrics.labelled(metrics.DEGRADED, "token_counter").inc()
            log.warning("token count failed, serving uncached: %s", exc)
            return Classification.degraded_zeros(), None
        if counts.tokenizer_version not in (None, scope.tokenizer_version):
            # The counter's version changed since the scope was built: these counts are not this scope's.
            metrics.labelled(metrics.DEGRADED, "token_counter").inc()
            log.warning("the tokenizer version changed while counting, serving uncached")
            return Classification.degraded_zeros(), None
        metrics.labelled(metrics.TOKEN_COUNTS, counts.method).inc()
        verified = deepest_hit(prompt, matches, counts.cumulative, counts.dropped)
        if verified != hit:
            metrics.STALE_HITS.inc()
            hit = verified
        classification = decide(scope, prompt, hit, counts.cumulative, tariff, now, counts.dropped)
        classification.counted_total = counts.total
        return classification, hit

    async def _recall(
        self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float
    ) -> Recall | None:
        try:
            return await self._index.recall(scope, hashes, keys, now)
        except IndexUnavailable as exc:
            log.warning("cache index recall failed, the miss goes undiagnosed: %s", exc)
            return None

    async def _diagnose(
        self,
        prompt: ParsedPrompt,
        sections: Outline,
        matches: list[IndexMatch],
        hit: Hit | None,
        recall: asyncio.Task[Recall | None] | None,
    ) -> CacheMiss | None:
        """Why the deepest breakpoint missed; None when the index could not say (its recall failed)."""
        read_block = None if hit is None else hit.block
        refused = [block for block in matched_blocks(prompt, matches) if read_block is None or block > read_block]
        if refused:
            return diagnose(prompt, sections, read_block, refused)
        remembered = await recall if recall is not None else None
        if remembered is None:
            return None
        blocks = {digest: block for block, digest in enumerate(prompt.prefix_hashes)}
        expired = [blocks[digest] for digest in remembered.expired if digest in blocks]
        return diagnose(prompt, sections, read_block, (), expired, remembered.trails)

    async def commit(self, writes: list[IndexEntry], trails: Sequence[Trail] = ()) -> bool:
        """Write new entries, and their request's trail, within the commit deadline; returns whether they landed."""
        if not writes:
            return True
        try:
            await asyncio.wait_for(self._index.write(writes, time.time(), trails), self._commit_deadline)
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
