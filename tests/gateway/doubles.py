"""Test doubles for the gateway's I/O components, and small builders shared by their tests.

The fake control stores implement only the method the component under test calls, so they are
handed over with ``cast(ControlStore, …)``; a call to anything else fails loudly with an
AttributeError instead of quietly answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import REGISTRY

from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, ParsedPrompt, Recall, Refresh, Trail
from cachegate.index.base import IndexUnavailable
from cachegate.index.memory import MemoryIndex
from cachegate.store.base import ApiKey, Catalog, LedgerRow, StoreUnavailable
from cachegate.store.keys import hash_secret
from cachegate.tokens.base import PromptCounts, TokenCountError

GIVE_UP_AFTER = 2.0
"""Seconds a test waits for a background task before failing; never a statement about speed."""

POLL = 0.002


def metric(name: str, **labels: str) -> float:
    """The current value of a Prometheus sample (0 before it was first incremented)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(condition: Callable[[], bool], timeout: float = GIVE_UP_AFTER) -> None:
    """Wait until ``condition()`` holds; raise AssertionError if it still does not after ``timeout``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not condition():
        if loop.time() > give_up:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(POLL)


def prompt_of(body: Mapping[str, Any]) -> ParsedPrompt:
    return parse_prompt(body, TtlPolicy.default_policy())


# --- cache index and token counter -------------------------------------------------------------


class ScriptedIndex(MemoryIndex):
    """A MemoryIndex that counts its calls and can be made to fail or to stall, one operation at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.recalls = 0
        self.refresh_batches: list[list[Refresh]] = []
        self.down: set[str] = set()  # operations ("lookup", "write", "refresh", "recall") that raise IndexUnavailable
        self.broken: set[str] = set()  # operations that raise an unexpected error (a bug, a driver error)
        self.stall_writes = False  # writes wait forever, like a backend that stopped answering

    def _check(self, operation: str) -> None:
        if operation in self.down:
            raise IndexUnavailable(f"{operation}: connection refused")
        if operation in self.broken:
            raise RuntimeError(f"{operation}: unexpected driver error")

    async def lookup(self, scope: CacheScope, hashes: Sequence[bytes], now: float) -> list[IndexMatch]:
        self.lookups += 1
        self._check("lookup")
        return await super().lookup(scope, hashes, now)

    async def write(self, entries: Sequence[IndexEntry], now: float, trails: Sequence[Trail] = ()) -> None:
        self._check("write")
        if self.stall_writes:
            await asyncio.Event().wait()
        await super().write(entries, now, trails)

    async def recall(self, scope: CacheScope, hashes: Sequence[bytes], keys: Sequence[bytes], now: float) -> Recall:
        self.recalls += 1
        self._check("recall")
        return await super().recall(scope, hashes, keys, now)

    async def refresh(self, refreshes: Sequence[Refresh], now: float) -> None:
        self.refresh_batches.append(list(refreshes))
        self._check("refresh")
        await super().refresh(refreshes, now)


class BlockCounter:
    """A TokenCounter where every block costs ``tokens_per_block``; records which blocks it was asked for."""

    def __init__(self, tokens_per_block: int = 600, *, fail: bool = False) -> None:
        self.tokens_per_block = tokens_per_block
        self.fail = fail
        self.asked: list[list[int]] = []

    @property
    def tokenizer_version(self) -> str:
        return "blocks-v1"

    @property
    def template_variables(self) -> frozenset[str]:
        return frozenset()

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        self.asked.append(list(blocks))
        if self.fail:
            raise TokenCountError("tokenizer service unreachable")
        return PromptCounts(
            cumulative={block: self.cumulative(block) for block in blocks},
            total=self.cumulative(len(prompt.blocks) - 1) + 7,  # the template's generation prompt
        )

    def cumulative(self, block: int) -> int:
        return self.tokens_per_block * (block + 1)

    async def aclose(self) -> None:
        return None


# --- control store -----------------------------------------------------------------------------

ISSUED = datetime(2025, 1, 1, tzinfo=UTC)


class KeyStore:
    """``find_api_key`` over a dict, counting calls; ``down`` makes it unreachable."""

    def __init__(self) -> None:
        self.keys: dict[bytes, ApiKey] = {}
        self.calls = 0
        self.down = False

    def issue(self, secret: str, key_id: str = "key_a") -> ApiKey:
        key = ApiKey(key_id, "prn_a", hash_secret(secret), is_admin=False, created_at=ISSUED, revoked_at=None)
        self.keys[key.secret_hash] = key
        return key

    def revoke(self, secret: str) -> None:
        digest = hash_secret(secret)
        self.keys[digest] = replace(self.keys[digest], revoked_at=ISSUED)

    async def revoke_api_key(self, key_id: str) -> None:
        for digest, key in self.keys.items():
            if key.id == key_id:
                self.keys[digest] = replace(key, revoked_at=ISSUED)

    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("control store: connection refused")
        return self.keys.get(secret_hash)


class LedgerStore:
    """``append_ledger`` into a list of batches.

    ``down`` makes it unreachable; ``failures`` are raised by the next calls, one each;
    ``before_write`` runs at the start of every call (to change the weather mid-flush);
    ``gate``, when set, holds every write until it opens.
    """

    def __init__(self) -> None:
        self.batches: list[list[LedgerRow]] = []
        self.calls = 0
        self.down = False
        self.failures: list[Exception] = []
        self.before_write: Callable[[], None] | None = None
        self.gate: asyncio.Event | None = None
        self.writing = asyncio.Event()  # set once a write has started
        self.refuses: Callable[[LedgerRow], bool] | None = None  # a batch holding such a row fails unmapped

    @property
    def written(self) -> list[int]:
        """The sequence numbers of the rows written, in the order they were written."""
        return [row.prompt_tokens for batch in self.batches for row in batch]

    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        self.calls += 1
        self.writing.set()
        if self.before_write is not None:
            self.before_write()
        if self.failures:
            raise self.failures.pop(0)
        if self.refuses is not None and any(self.refuses(row) for row in rows):
            raise ValueError("numeric field overflow")  # what a driver raises; no adapter maps it
        if self.down:
            raise StoreUnavailable("control store: connection refused")
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(list(rows))


def ledger_row(sequence: int) -> LedgerRow:
    """A ledger row told apart by its ``prompt_tokens``."""
    return LedgerRow(
        at=ISSUED,
        principal_id="prn_a",
        key_id="key_a",
        model="m",
        status=200,
        streaming=False,
        prompt_tokens=sequence,
        completion_tokens=0,
        cache_read_tokens=0,
        cache_creation_5m_tokens=0,
        cache_creation_1h_tokens=0,
        cache_creation_24h_tokens=0,
        upstream_cached_tokens=None,
        cost=Decimal(0),
        list_cost=Decimal(0),
        latency_ms=1.0,
        degraded=False,
    )


class CatalogStore:
    """``load_catalog`` from an attribute; ``failure``, when set, is raised instead."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.failure: Exception | None = None
        self.loads = 0

    async def load_catalog(self) -> Catalog:
        self.loads += 1
        if self.failure is not None:
            raise self.failure
        return self.catalog
