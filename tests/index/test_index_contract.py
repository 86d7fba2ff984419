"""The behaviour every cache index backend shares (SPEC §7.2), run against each of them.

Times are explicit Unix seconds around ``NOW`` (with fractions, to check they round-trip exactly).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Refresh, Trail, TtlTier
from cachegate.index.base import CacheIndex

NOW = 1_750_000_000.25
ALICE = CacheScope(principal="alice", model="qwen", tokenizer_version="sha256:v1")


def digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def entry(
    name: str,
    tokens: int = 1024,
    ttl: TtlTier = TtlTier.FIVE_MINUTES,
    expires_at: float = NOW + 300,
    scope: CacheScope = ALICE,
) -> IndexEntry:
    return IndexEntry(scope=scope, prefix_hash=digest(name), cumulative_tokens=tokens, ttl=ttl, expires_at=expires_at)


def match(name: str, tokens: int, ttl: TtlTier, expires_at: float) -> IndexMatch:
    return IndexMatch(prefix_hash=digest(name), cumulative_tokens=tokens, ttl=ttl, expires_at=expires_at)


def refresh(name: str, expires_at: float, scope: CacheScope = ALICE) -> Refresh:
    return Refresh(scope=scope, prefix_hash=digest(name), expires_at=expires_at)


async def found(index: CacheIndex, *names: str, now: float = NOW, scope: CacheScope = ALICE) -> list[IndexMatch]:
    matches = await index.lookup(scope, [digest(name) for name in names], now)
    return sorted(matches, key=lambda m: m.prefix_hash)


# The reference module's postgres.rs tests, with its values.


async def test_write_then_lookup_returns_match(index: CacheIndex) -> None:
    await index.write([entry("hash-a", 1024, TtlTier.ONE_HOUR, NOW + 3600.125)], NOW)

    assert await found(index, "hash-a", "missing") == [match("hash-a", 1024, TtlTier.ONE_HOUR, NOW + 3600.125)]
    assert await found(index, "missing") == []


async def test_lookup_excludes_expired_and_other_scopes(index: CacheIndex) -> None:
    bob = replace(ALICE, principal="bob")
    await index.write([entry("expired", expires_at=NOW - 1), entry("live", scope=bob)], NOW - 300)

    assert await found(index, "expired", "live") == []
    assert await found(index, "live", scope=bob) == [match("live", 1024, TtlTier.FIVE_MINUTES, NOW + 300)]


async def test_refresh_slides_expiry(index: CacheIndex) -> None:
    await index.write([entry("hash-a", expires_at=NOW + 2)], NOW)

    await index.refresh([refresh("hash-a", NOW + 3600)], NOW)

    (hit,) = await found(index, "hash-a")
    assert hit.expires_at > NOW + 1800


async def test_write_upserts_on_conflict(index: CacheIndex) -> None:
    await index.write([entry("hash-a", 100, TtlTier.FIVE_MINUTES, NOW + 300)], NOW)
    await index.write([entry("hash-a", 200, TtlTier.ONE_HOUR, NOW + 3600)], NOW)

    assert await found(index, "hash-a") == [match("hash-a", 200, TtlTier.ONE_HOUR, NOW + 3600)]
    assert await index.sweep(NOW + 10**6) == 1  # one row, not two


# Liveness: an entry lives while expires_at > now.


async def test_entry_expires_exactly_at_its_expiry(index: CacheIndex) -> None:
    await index.write([entry("a", expires_at=NOW + 300)], NOW)

    assert len(await found(index, "a", now=NOW + 299.999)) == 1
    assert await found(index, "a", now=NOW + 300) == []


async def test_lookup_returns_each_live_hash_once(index: CacheIndex) -> None:
    await index.write([entry("a"), entry("b", 2048)], NOW)

    matches = await found(index, "a", "b", "a", "c", "b")

    assert matches == sorted(
        [
            match("a", 1024, TtlTier.FIVE_MINUTES, NOW + 300),
            match("b", 2048, TtlTier.FIVE_MINUTES, NOW + 300),
        ],
        key=lambda m: m.prefix_hash,
    )


# CacheScope isolation: principal, model alias and tokenizer_version are all part of the key.

OTHER_SCOPES = [
    pytest.param(replace(ALICE, principal="mallory"), id="other-principal"),
    pytest.param(replace(ALICE, model="qwen-large"), id="other-model"),
    pytest.param(replace(ALICE, tokenizer_version="sha256:v2"), id="other-tokenizer-version"),
]


@pytest.mark.parametrize("other", OTHER_SCOPES)
async def test_other_scope_never_sees_an_entry(index: CacheIndex, other: CacheScope) -> None:
    await index.write([entry("shared-prefix")], NOW)

    assert await found(index, "shared-prefix", scope=other) == []


@pytest.mark.parametrize("other", OTHER_SCOPES)
async def test_other_scope_cannot_refresh_or_replace_an_entry(index: CacheIndex, other: CacheScope) -> None:
    await index.write([entry("shared-prefix", 1024, TtlTier.FIVE_MINUTES, NOW + 300)], NOW)

    await index.refresh([refresh("shared-prefix", NOW + 3600, scope=other)], NOW)
    await index.write([entry("shared-prefix", 7, TtlTier.ONE_HOUR, NOW + 3600, scope=other)], NOW)

    assert await found(index, "shared-prefix") == [match("shared-prefix", 1024, TtlTier.FIVE_MINUTES, NOW + 300)]
    assert await found(index, "shared-prefix", scope=other) == [match("shared-prefix", 7, TtlTier.ONE_HOUR, NOW + 3600)]


async def test_one_batch_may_span_scopes(index: CacheIndex) -> None:
    bob = replace(ALICE, principal="bob")
    await index.write([entry("a", 1, scope=ALICE), entry("a", 2, scope=bob)], NOW)

    assert [m.cumulative_tokens for m in await found(index, "a", scope=ALICE)] == [1]
    assert [m.cumulative_tokens for m in await found(index, "a", scope=bob)] == [2]


# Refresh: forward only, live entries only.


async def test_refresh_never_shortens(index: CacheIndex) -> None:
    await index.write([entry("a", ttl=TtlTier.ONE_HOUR, expires_at=NOW + 3600)], NOW)

    await index.refresh([refresh("a", NOW + 300)], NOW)

    assert await found(index, "a") == [match("a", 1024, TtlTier.ONE_HOUR, NOW + 3600)]


async def test_refresh_does_not_revive_an_expired_entry(index: CacheIndex) -> None:
    await index.write([entry("a", expires_at=NOW + 300)], NOW)

    await index.refresh([refresh("a", NOW + 900)], NOW + 300)

    assert await found(index, "a", now=NOW + 300) == []
    assert await found(index, "a", now=NOW) == [match("a", 1024, TtlTier.FIVE_MINUTES, NOW + 300)]


async def test_refresh_of_an_unknown_entry_creates_nothing(index: CacheIndex) -> None:
    await index.refresh([refresh("never-written", NOW + 300)], NOW)

    assert await found(index, "never-written") == []


async def test_refresh_batch_applies_in_order_and_keeps_the_latest_expiry(index: CacheIndex) -> None:
    await index.write([entry("a"), entry("b")], NOW)

    await index.refresh([refresh("a", NOW + 900), refresh("b", NOW + 600), refresh("a", NOW + 700)], NOW + 60)

    assert await found(index, "a", "b") == sorted(
        [
            match("a", 1024, TtlTier.FIVE_MINUTES, NOW + 900),
            match("b", 1024, TtlTier.FIVE_MINUTES, NOW + 600),
        ],
        key=lambda m: m.prefix_hash,
    )


# Write: an upsert that never shortens a live entry.


async def test_write_never_shortens_a_live_entry(index: CacheIndex) -> None:
    await index.write([entry("a", 1000, TtlTier.ONE_HOUR, NOW + 3600)], NOW)

    await index.write([entry("a", 1001, TtlTier.FIVE_MINUTES, NOW + 600)], NOW + 300)

    # The longer life and the TTL that gave it stay; the count is the newest measurement.
    assert await found(index, "a", now=NOW + 300) == [match("a", 1001, TtlTier.ONE_HOUR, NOW + 3600)]


async def test_write_extends_a_live_entry(index: CacheIndex) -> None:
    await index.write([entry("a", 1000, TtlTier.ONE_HOUR, NOW + 3600)], NOW)

    await index.write([entry("a", 1000, TtlTier.FIVE_MINUTES, NOW + 3700)], NOW + 3400)

    assert await found(index, "a", now=NOW + 3400) == [match("a", 1000, TtlTier.FIVE_MINUTES, NOW + 3700)]


async def test_write_replaces_an_expired_entry(index: CacheIndex) -> None:
    await index.write([entry("a", 1000, TtlTier.ONE_HOUR, NOW + 3600)], NOW)

    await index.write([entry("a", 900, TtlTier.FIVE_MINUTES, NOW + 7500)], NOW + 7200)

    assert await found(index, "a", now=NOW + 7200) == [match("a", 900, TtlTier.FIVE_MINUTES, NOW + 7500)]
    assert await index.sweep(NOW + 10**6) == 1


async def test_batch_with_duplicates_applies_in_order(index: CacheIndex) -> None:
    await index.write(
        [
            entry("short-then-long", 100, TtlTier.FIVE_MINUTES, NOW + 300),
            entry("short-then-long", 200, TtlTier.ONE_HOUR, NOW + 3600),
            entry("long-then-short", 100, TtlTier.ONE_HOUR, NOW + 3600),
            entry("long-then-short", 200, TtlTier.FIVE_MINUTES, NOW + 300),
        ],
        NOW,
    )

    assert await found(index, "short-then-long") == [match("short-then-long", 200, TtlTier.ONE_HOUR, NOW + 3600)]
    assert await found(index, "long-then-short") == [match("long-then-short", 200, TtlTier.ONE_HOUR, NOW + 3600)]
    assert await index.sweep(NOW + 10**6) == 2


async def test_every_tier_round_trips(index: CacheIndex) -> None:
    await index.write([entry(tier.value, ttl=tier, expires_at=NOW + tier.seconds) for tier in TtlTier], NOW)

    for tier in TtlTier:
        assert await found(index, tier.value) == [match(tier.value, 1024, tier, NOW + tier.seconds)]


# Sweep and empty input.


async def test_sweep_removes_only_expired_entries_and_counts_them(index: CacheIndex) -> None:
    bob = replace(ALICE, principal="bob")
    await index.write(
        [
            entry("gone", expires_at=NOW - 1),
            entry("expires-now", expires_at=NOW),
            entry("gone-too", expires_at=NOW - 5, scope=bob),
            entry("live", expires_at=NOW + 0.5),
        ],
        NOW - 10,
    )

    assert await index.sweep(NOW) == 3
    assert await index.sweep(NOW) == 0
    assert await found(index, "live") == [match("live", 1024, TtlTier.FIVE_MINUTES, NOW + 0.5)]
    assert await found(index, "gone", "expires-now", now=NOW - 10) == []


async def test_empty_inputs_are_no_ops(index: CacheIndex) -> None:
    await index.write([entry("a")], NOW)

    await index.write([], NOW)
    await index.refresh([], NOW)

    assert await index.lookup(ALICE, [], NOW) == []
    assert len(await found(index, "a")) == 1


async def test_sweep_of_an_empty_index_removes_nothing(index: CacheIndex) -> None:
    assert await index.sweep(NOW) == 0


# Recall and trails: what a scope remembers beyond its live entries, for the diagnosis of misses (SPEC §14).


def trail(
    key: bytes, sections: bytes = b"\x01" * 16, expires_at: float = NOW + 300, scope: CacheScope = ALICE
) -> Trail:
    return Trail(scope=scope, key=key, anchor=b"anchor-1", sections=sections, expires_at=expires_at)


async def test_recall_reports_expired_entries_never_live_ones(index: CacheIndex) -> None:
    await index.write([entry("expired", expires_at=NOW - 1), entry("now", expires_at=NOW), entry("live")], NOW - 300)

    recalled = await index.recall(ALICE, [digest(name) for name in ("expired", "now", "live", "missing")], [], NOW)

    assert recalled.expired == {digest("expired"), digest("now")}
    assert recalled.trails == ()
    assert await found(index, "expired", "now") == []  # the lookup still never returns them


async def test_recall_stays_in_its_scope(index: CacheIndex) -> None:
    bob = replace(ALICE, principal="bob")
    await index.write([entry("expired", expires_at=NOW - 1)], NOW - 300, [trail(b"latest")])

    recalled = await index.recall(bob, [digest("expired")], [b"latest"], NOW)

    assert recalled.expired == frozenset()
    assert recalled.trails == ()


async def test_a_trail_round_trips_and_the_newest_replaces_it(index: CacheIndex) -> None:
    await index.write([entry("a")], NOW, [trail(b"latest", b"\x01" * 8), trail(b"anchor:x", b"\x02" * 8)])
    await index.write([], NOW, [trail(b"latest", b"\x03" * 24, expires_at=NOW + 3600.5)])

    recalled = await index.recall(ALICE, [], [b"latest", b"anchor:x", b"anchor:none"], NOW)

    assert sorted(recalled.trails, key=lambda t: t.key) == [
        trail(b"anchor:x", b"\x02" * 8),
        trail(b"latest", b"\x03" * 24, expires_at=NOW + 3600.5),
    ]


async def test_a_trails_expiry_is_never_shortened(index: CacheIndex) -> None:
    await index.write([], NOW, [trail(b"latest", b"\x01" * 8, expires_at=NOW + 3600)])
    await index.write([], NOW, [trail(b"latest", b"\x02" * 8, expires_at=NOW + 300)])

    (kept,) = (await index.recall(ALICE, [], [b"latest"], NOW)).trails
    assert kept == trail(b"latest", b"\x02" * 8, expires_at=NOW + 3600)


async def test_an_empty_anchor_and_an_empty_trail_round_trip(index: CacheIndex) -> None:
    bare = Trail(ALICE, b"latest", b"", b"", NOW + 300)
    await index.write([], NOW, [bare])

    assert (await index.recall(ALICE, [], [b"latest"], NOW)).trails == (bare,)


async def test_sweep_removes_expired_trails_too(index: CacheIndex) -> None:
    await index.write(
        [entry("gone", expires_at=NOW - 1)], NOW - 10, [trail(b"old", expires_at=NOW - 1), trail(b"kept")]
    )

    assert await index.sweep(NOW) == 2
    recalled = await index.recall(ALICE, [digest("gone")], [b"old", b"kept"], NOW)
    assert recalled.expired == frozenset()
    assert [t.key for t in recalled.trails] == [b"kept"]


async def test_recall_of_nothing_is_empty(index: CacheIndex) -> None:
    recalled = await index.recall(ALICE, [], [], NOW)
    assert recalled.expired == frozenset()
    assert recalled.trails == ()


async def test_a_batch_naming_keys_twice_with_trails_applies_in_order(index: CacheIndex) -> None:
    await index.write(
        [entry("twice", 100, TtlTier.FIVE_MINUTES, NOW + 300), entry("twice", 200, TtlTier.ONE_HOUR, NOW + 3600)],
        NOW,
        [trail(b"latest", b"\x01" * 8), trail(b"latest", b"\x02" * 8, expires_at=NOW + 600)],
    )

    assert await found(index, "twice") == [match("twice", 200, TtlTier.ONE_HOUR, NOW + 3600)]
    assert (await index.recall(ALICE, [], [b"latest"], NOW)).trails == (
        trail(b"latest", b"\x02" * 8, expires_at=NOW + 600),
    )
