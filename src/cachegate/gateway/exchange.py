"""One chat request in flight: what the cache decided and what must happen when the response ends.

Both response shapes (a JSON body, an SSE stream) reach the same three moments — the usage is
needed, the response succeeded, the request is over — and this object is where the cache
work for each moment lives, so the JSON and streaming paths cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cachegate.core.diagnosis import PENDING_DIAGNOSTICS, diagnostics_body
from cachegate.core.pricing import price
from cachegate.core.types import CacheMiss, CacheStats, CacheTariff, Classification
from cachegate.core.usage import scrub_usage, splice_usage, upstream_cached_tokens
from cachegate.gateway import metrics
from cachegate.gateway.classifier import CacheClassifier
from cachegate.gateway.ledger import LedgerWriter
from cachegate.store.base import ApiKey, LedgerRow, Model

log = logging.getLogger(__name__)

MISS_HEADER = b"x-cachegate-cache-miss"


@dataclass(slots=True)
class Exchange:
    key: ApiKey
    model: Model
    tariff: CacheTariff | None  # None: caching is off for this model
    streaming: bool
    started_at: float  # time.time() when the request arrived: tariffs and TTLs count from here
    started_perf: float
    classify_deadline: float
    classifier: CacheClassifier
    ledger: LedgerWriter | None = None  # None: nothing is billed (tests of the cache moments alone)
    task: asyncio.Task[Classification] | None = None
    classification: Classification | None = None
    reported: CacheStats = field(default_factory=CacheStats)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    upstream_cached: int | None = None
    status: int = 0
    route: str = "chat"  # the route that serves it, for the ledger
    billed: bool = False
    drain_seconds: float = 0.0  # how long a response whose client left is still read for its usage
    count_prompt: Callable[[], Awaitable[int | None]] | None = None  # our count of the whole prompt, on demand
    relayed_tokens: int = 0  # completion tokens relayed so far (core.relayed), for a client that leaves
    disconnect: str | None = None  # how a client that left was billed: "drained" or "counted"
    wants_diagnostics: bool = False  # the client asked for the miss diagnosis in the body (SPEC §14)

    @property
    def cache_enabled(self) -> bool:
        return self.tariff is not None

    @property
    def degraded(self) -> bool:
        return self.classification is not None and self.classification.degraded

    @property
    def miss(self) -> CacheMiss | None:
        """Why the deepest breakpoint did not read, once decided (SPEC §14); None if it read, or no caching."""
        if not self.cache_enabled or self.classification is None:
            return None
        return self.classification.miss

    def miss_header(self) -> list[tuple[bytes, bytes]]:
        """The ``x-cachegate-cache-miss`` header, if the diagnosis is known now (SPEC §14)."""
        miss = self.miss if self.cache_enabled and self.ready_classification() is not None else None
        return [] if miss is None else [(MISS_HEADER, str(miss).encode())]

    def diagnostics(self) -> dict[str, Any] | None:
        """The body's ``diagnostics`` (Anthropic's shape), for a client that asked; the split must be decided.

        A miss the index could not explain is Anthropic's "reason unknown" (``cache_miss_reason: null``),
        never the ``null`` of a read."""
        if self.cache_enabled and self.classification is not None and self.classification.undiagnosed:
            return dict(PENDING_DIAGNOSTICS)
        return diagnostics_body(self.miss)

    async def classification_result(self) -> Classification:
        """The classification, awaited only now that the usage is needed, within the deadline (§2.5)."""
        if self.classification is not None:
            return self.classification
        if self.task is not None and not self.task.done():
            remaining = self.classify_deadline - (time.perf_counter() - self.started_perf)
            try:
                await asyncio.wait_for(asyncio.shield(self.task), max(remaining, 0.0))
            except TimeoutError:
                self.task.cancel()
                metrics.labelled(metrics.DEGRADED, "deadline").inc()
                log.warning("cache classification missed its deadline, serving uncached")
                self.classification = Classification.degraded_zeros()
                return self.classification
            except Exception:  # the finished task's error is reported just below
                pass
        self.classification = self._settled()
        return self.classification

    def _settled(self) -> Classification:
        """The classification of a finished (or absent) task; a task that failed degrades (§11)."""
        if self.task is None:
            return Classification()
        try:
            return self.task.result()
        except (Exception, asyncio.CancelledError):
            metrics.labelled(metrics.DEGRADED, "error").inc()
            log.exception("cache classification failed, serving uncached")
            return Classification.degraded_zeros()

    async def apply_usage(self, usage: dict[str, Any]) -> None:
        """Write our cache fields into ``usage`` (or scrub the upstream's, for a model without caching)."""
        self._record_counts(usage)
        if not self.cache_enabled:
            scrub_usage(usage)
            return
        classification = await self.classification_result()
        if classification.counted_total is not None and isinstance(usage.get("prompt_tokens"), int):
            drift = classification.counted_total - usage["prompt_tokens"]
            metrics.labelled(metrics.COUNT_DRIFT, self.model.alias).observe(drift)
        before = classification.stats
        self.reported = splice_usage(usage, before, degraded=classification.degraded)
        if self.reported != before:
            metrics.CAPPED.inc()

    def apply_usage_if_ready(self, usage: dict[str, Any]) -> None:
        """For frames that carry usage mid-stream: never wait; splice if decided, else scrub (§8)."""
        self._record_counts(usage)
        classification = self.ready_classification() if self.cache_enabled else None
        if classification is None:
            scrub_usage(usage)
            return
        splice_usage(usage, classification.stats, degraded=classification.degraded)

    def ready_classification(self) -> Classification | None:
        """The classification if it is decided already, without waiting; None while it runs."""
        if self.task is not None and not self.task.done():
            return None
        if self.classification is None:
            self.classification = self._settled()
        return self.classification

    async def succeeded(self) -> None:
        """The response succeeded (§7.4): commit new entries now, before its last byte; queue the refresh."""
        if self.classification is None:
            return
        if self.classification.writes:
            await self.classifier.commit(self.classification.writes, self.classification.trails)
        if self.classification.refresh is not None:
            self.classifier.refreshes.add(self.classification.refresh)

    async def stream_ended(self, *, ok: bool, saw_error: bool, usage_seen: bool, client_gone: bool) -> None:
        """A stream's end, whatever its dialect: commit only if it succeeded (§7.4), else veto, saying why."""
        if not ok:
            self.vetoed("non_2xx")
        elif saw_error:
            self.vetoed("error_frame")
        elif not usage_seen:
            self.vetoed("no_usage")
        elif client_gone:
            self.vetoed("client_disconnected")
        else:
            await self.succeeded()
        await self.bill()  # before the stream's last event: a client that saw the end has been billed

    async def client_left(self, usage: dict[str, Any] | None) -> None:
        """The client left before the end (SPEC §11): commit nothing (§7.4), bill what it caused.

        ``usage`` is the upstream's final usage if it came within ``drain_seconds`` after the
        client left ("drained"): billed as any request. Without it ("counted"), the prompt is our
        own count and the completion the tokens relayed. The cache split keeps the reads (they
        were served) and drops the writes: nothing was committed, so no write is charged. An
        upstream that refused the request (non-2xx) produced nothing: billed as it answered.
        """
        if not 200 <= self.status < 300:
            self.vetoed("client_disconnected")
            return
        await self._cut_short(usage, "client_disconnected", 499)  # nginx's "client closed request"
        metrics.labelled(metrics.CLIENTS_LEFT, self.disconnect).inc()

    async def stream_broke(self, usage: dict[str, Any] | None) -> None:
        """The upstream's stream broke off after it began (reset, read timeout, an event over the
        SSE limit; SPEC §11): commit nothing, and bill what it caused as a client that left is
        billed (the upstream did the work), with status 502: the answer reached its client broken."""
        if not 200 <= self.status < 300:
            self.vetoed("upstream_broken")
            return
        await self._cut_short(usage, "upstream_broken", 502)

    async def _cut_short(self, usage: dict[str, Any] | None, reason: str, status: int) -> None:
        """Veto the commit for ``reason`` and set the counts of an answer that ended early."""
        classification = await self.classification_result() if self.cache_enabled else None
        self.vetoed(reason)
        self.status = status
        if usage is not None:
            self.disconnect = "drained"
            self._record_counts(usage)
        else:
            self.disconnect = "counted"
            counted = classification.counted_total if classification is not None else None
            if counted is None and self.count_prompt is not None:
                counted = await self.count_prompt()
            if counted is not None:
                self.prompt_tokens = counted
            self.completion_tokens = max(self.completion_tokens, self.relayed_tokens)
        if classification is not None and not classification.degraded:
            self.reported = CacheStats(read=min(classification.stats.read, self.prompt_tokens))
        else:
            self.reported = CacheStats()

    def vetoed(self, reason: str) -> None:
        """The response did not succeed: whatever the classification planned is dropped."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.classification is not None and self.classification.writes:
            metrics.labelled(metrics.COMMITS_VETOED, reason).inc()

    async def bill(self) -> None:
        """Record this request's ledger row, once; the first call wins.

        Awaited before the response's last byte (a JSON body before it is sent, a stream before its
        ``[DONE]``): the row is in the journal by the time the client has the whole answer, so a
        crash after that cannot lose it (issue 15). Requests that end any other way are billed
        when the route finishes.
        """
        if self.billed or self.ledger is None:
            return
        self.billed = True
        await self.ledger.record(self.ledger_row(self.ledger.new_row_id()))

    def ledger_row(self, row_id: str | None = None) -> LedgerRow:
        cost: Decimal | None
        list_cost: Decimal | None
        cost, list_cost = price(
            self.prompt_tokens,
            self.completion_tokens,
            self.reported,
            self.model.input_price,
            self.model.output_price,
            self.tariff,
        )
        self._count_outcome()
        return LedgerRow(
            at=datetime.fromtimestamp(self.started_at, UTC),
            principal_id=self.key.principal_id,
            key_id=self.key.id,
            model=self.model.alias,
            status=self.status,
            streaming=self.streaming,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cache_read_tokens=self.reported.read,
            cache_creation_5m_tokens=self.reported.creation_5m,
            cache_creation_1h_tokens=self.reported.creation_1h,
            cache_creation_24h_tokens=self.reported.creation_24h,
            upstream_cached_tokens=self.upstream_cached,
            cost=cost,
            list_cost=list_cost,
            latency_ms=(time.perf_counter() - self.started_perf) * 1000.0,
            degraded=self.degraded,
            counted_prompt_tokens=self.classification.counted_total if self.classification is not None else None,
            route=self.route,
            disconnect=self.disconnect,
            miss_reason=None if self.miss is None else self.miss.reason.value,
            row_id=row_id,
        )

    def _record_counts(self, usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion
        cached = upstream_cached_tokens(usage)
        if cached is not None:
            self.upstream_cached = cached

    def _count_outcome(self) -> None:
        if not self.cache_enabled:
            return
        stats = self.reported
        if self.degraded:
            outcome = "degraded"
        elif stats.read and stats.creation:
            outcome = "read_and_write"
        elif stats.read:
            outcome = "read"
        elif stats.creation:
            outcome = "write"
        else:
            outcome = "none"
        metrics.labelled(metrics.CACHE_OUTCOMES, outcome).inc()
        if self.miss is not None:
            metrics.labelled(metrics.CACHE_MISSES, self.model.alias, self.miss.reason.value).inc()
        if stats.read:
            metrics.labelled(metrics.CACHE_TOKENS, self.model.alias, "read").inc(stats.read)
        if stats.creation:
            metrics.labelled(metrics.CACHE_TOKENS, self.model.alias, "creation").inc(stats.creation)
