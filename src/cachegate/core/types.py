"""Plain value types shared by the pure core and the ports around it.

Everything here is immutable data with no I/O: the classification takes these in and gives
these out, and the adapters (index backends, token counters, the ASGI shell) only move them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import timedelta


class TtlTier(enum.StrEnum):
    """A cache lifetime a breakpoint may ask for (SPEC §3.2)."""

    FIVE_MINUTES = "5m"
    ONE_HOUR = "1h"
    ONE_DAY = "24h"

    @property
    def duration(self) -> timedelta:
        return _DURATIONS[self]

    @property
    def seconds(self) -> int:
        return int(_DURATIONS[self].total_seconds())

    @property
    def rank(self) -> int:
        """Longer lifetimes rank higher; a breakpoint may not outrank the one before it (§3.3)."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: str) -> TtlTier:
        return cls(value)


_DURATIONS = {
    TtlTier.FIVE_MINUTES: timedelta(minutes=5),
    TtlTier.ONE_HOUR: timedelta(hours=1),
    TtlTier.ONE_DAY: timedelta(hours=24),
}
_RANKS = {TtlTier.FIVE_MINUTES: 0, TtlTier.ONE_HOUR: 1, TtlTier.ONE_DAY: 2}


class BlockKind(enum.StrEnum):
    """What a block is; fed into the running hash so a tool and a text never collide."""

    TOOL = "tool"
    PART = "part"  # a content part of a message (string content is one text part)
    TOOL_CALL = "tool_call"  # an assistant's tool_calls[k]
    HEADER = "header"  # a message that has neither content nor tool calls: its header alone


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Where a block sits in the request, so a token counter can find its text again.

    ``message`` is None for tool definitions; ``index`` is the tool index, the content-part
    index, or the tool-call index, by ``kind``; it is None for a header-only block.
    """

    kind: BlockKind
    message: int | None
    index: int | None


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A cache breakpoint: the prefix ending at ``block`` (index into ``ParsedPrompt.blocks``)."""

    block: int
    ttl: TtlTier
    automatic: bool = False


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    """The prompt as an ordered list of blocks, their prefix hashes and the breakpoints (§4)."""

    blocks: tuple[BlockRef, ...]
    prefix_hashes: tuple[bytes, ...]  # prefix_hashes[i] = digest after block i
    breakpoints: tuple[Breakpoint, ...]  # in block order, at most 4


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Nothing is ever shared across scopes (§6.1)."""

    principal: str
    model: str  # the model alias the client asked for
    tokenizer_version: str


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the cache index (§7.1). ``expires_at`` is a Unix timestamp in seconds."""

    scope: CacheScope
    prefix_hash: bytes
    cumulative_tokens: int
    ttl: TtlTier
    expires_at: float


@dataclass(frozen=True, slots=True)
class IndexMatch:
    """A live entry returned by a lookup."""

    prefix_hash: bytes
    cumulative_tokens: int
    ttl: TtlTier
    expires_at: float


@dataclass(frozen=True, slots=True)
class Refresh:
    """Slide a hit entry's expiry (§6.5)."""

    scope: CacheScope
    prefix_hash: bytes
    expires_at: float


@dataclass(slots=True)
class CacheStats:
    """The split the response reports and the ledger bills (§8)."""

    read: int = 0
    creation_5m: int = 0
    creation_1h: int = 0
    creation_24h: int = 0

    @property
    def creation(self) -> int:
        return self.creation_5m + self.creation_1h + self.creation_24h

    def add_creation(self, tier: TtlTier, tokens: int) -> None:
        if tier is TtlTier.FIVE_MINUTES:
            self.creation_5m += tokens
        elif tier is TtlTier.ONE_HOUR:
            self.creation_1h += tokens
        else:
            self.creation_24h += tokens

    def creation_of(self, tier: TtlTier) -> int:
        if tier is TtlTier.FIVE_MINUTES:
            return self.creation_5m
        if tier is TtlTier.ONE_HOUR:
            return self.creation_1h
        return self.creation_24h


@dataclass(frozen=True, slots=True)
class CacheTariff:
    """The cache part of a model's price list (§10); a tariff in force enables caching."""

    write_multiplier_5m: str = "1.25"
    write_multiplier_1h: str = "2.0"
    write_multiplier_24h: str = "2.5"
    read_multiplier: str = "0.1"
    min_prefix_tokens: int = 1024


class MissReason(enum.StrEnum):
    """Why a request's deepest breakpoint did not read (SPEC §14)."""

    FIRST_WRITE = "first_write"  # no entry of this scope ever held its prefix (that the index remembers)
    EXPIRED = "expired"  # an entry of this prompt's prefix, deeper than what was read, has expired
    PREFIX_CHANGED = "prefix_changed"  # an earlier request of this conversation differs at ``CacheMiss.block``
    BELOW_FLOOR = "below_floor"  # the prefix is shorter than the tariff's min_prefix_tokens
    DEGRADED = "degraded"  # served uncached because of an outage (§11)


Section = str | int
"""Where a changed block sits: ``"tools"``, ``"system"``, or the index of a message of the client's request."""


@dataclass(frozen=True, slots=True)
class CacheMiss:
    """The diagnosis of a deepest breakpoint that did not read (SPEC §14)."""

    reason: MissReason
    block: Section | None = None  # prefix_changed only: the first changed block

    def __str__(self) -> str:
        """The header's value, an RFC 8941 item: ``first_write``, ``prefix_changed;block=tools``, ``...;block=3``."""
        if self.block is None:
            return self.reason.value
        return f"{self.reason.value};block={self.block}"

    def as_json(self) -> dict[str, object]:
        """The body's ``cache_miss_reason`` object."""
        if self.block is None:
            return {"type": self.reason.value}
        return {"type": self.reason.value, "block": self.block}


@dataclass(frozen=True, slots=True)
class Trail:
    """A compact outline of a committed request, kept by its scope to diagnose later misses (SPEC §14).

    ``sections`` is the concatenation of short digests (``core.diagnosis.DIGEST_BYTES`` each) of
    the prompt's prefix hashes at the end of each section (the tools, the system prompt, then each
    other message), up to
    the section of the deepest breakpoint; ``anchor`` is the digest of the first message after
    the system prompt (empty if there is none): what says two requests are one conversation.
    The trail is stored under ``key`` (its anchor's, or the scope-wide latest) until ``expires_at``
    plus the index's retention.
    """

    scope: CacheScope
    key: bytes
    anchor: bytes
    sections: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class Recall:
    """What the index remembers of a scope beyond its live entries: asked only on a miss (SPEC §14)."""

    expired: frozenset[bytes] = frozenset()  # the asked hashes whose entry has expired (still retained)
    trails: tuple[Trail, ...] = ()  # the trails stored under the asked keys


@dataclass(slots=True)
class Classification:
    """What the classification decided: the split to report and the index work to do."""

    stats: CacheStats = field(default_factory=CacheStats)
    writes: list[IndexEntry] = field(default_factory=list)
    refresh: Refresh | None = None
    degraded: bool = False  # zeros because of an outage, not because of the request (§11)
    counted_total: int | None = None  # our count of the whole prompt, when it was rendered
    miss: CacheMiss | None = None  # why the deepest breakpoint did not read; None when it read (§14)
    undiagnosed: bool = False  # it did not read, and the index could not say why (its recall failed)
    trails: list[Trail] = field(default_factory=list)  # committed with ``writes``

    @classmethod
    def degraded_zeros(cls) -> Classification:
        return cls(degraded=True, miss=CacheMiss(MissReason.DEGRADED))
