"""Property: on any sequence of operations, SQLite, PostgreSQL and Redis answer exactly as MemoryIndex does.

The examples share one index (hypothesis reuses the fixture), so each example writes under
principals of its own; a scope is never touched by another example.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.core.types import CacheScope, IndexEntry, IndexMatch, Refresh, TtlTier
from cachegate.index.base import CacheIndex
from cachegate.index.memory import MemoryIndex

HASHES = [hashlib.sha256(name.encode()).digest() for name in ("a", "b", "c")]
# Offsets from the operation's time: expired, on the boundary, and live for various lengths.
EXPIRY_OFFSETS = [-300.0, -0.5, 0.0, 0.5, 150.0, 300.0, 3600.0]
_example_ids = itertools.count()


@dataclass(frozen=True)
class Write:
    items: list[tuple[int, int, int, TtlTier, float]]  # scope, hash, tokens, ttl, expiry offset


@dataclass(frozen=True)
class Slide:
    items: list[tuple[int, int, float]]  # scope, hash, expiry offset


@dataclass(frozen=True)
class Sweep:
    pass


@dataclass(frozen=True)
class Operation:
    advance: float  # time passes before the operation; never backwards
    action: Write | Slide | Sweep


scope_ids = st.integers(0, 1)
hash_ids = st.integers(0, len(HASHES) - 1)
offsets = st.sampled_from(EXPIRY_OFFSETS)
actions = st.one_of(
    st.builds(
        Write,
        st.lists(
            st.tuples(scope_ids, hash_ids, st.integers(0, 5000), st.sampled_from(TtlTier), offsets),
            max_size=4,
        ),
    ),
    st.builds(Slide, st.lists(st.tuples(scope_ids, hash_ids, offsets), max_size=4)),
    st.just(Sweep()),
)
operations = st.lists(st.builds(Operation, st.sampled_from([0.0, 0.5, 100.0, 300.0, 3600.0]), actions), max_size=12)


async def apply(index: CacheIndex, action: Write | Slide | Sweep, scopes: list[CacheScope], now: float) -> None:
    if isinstance(action, Write):
        await index.write(
            [IndexEntry(scopes[s], HASHES[h], tokens, ttl, now + offset) for s, h, tokens, ttl, offset in action.items],
            now,
        )
    elif isinstance(action, Slide):
        await index.refresh([Refresh(scopes[s], HASHES[h], now + offset) for s, h, offset in action.items], now)
    else:
        await index.sweep(now)


async def visible(index: CacheIndex, scopes: list[CacheScope], now: float) -> list[list[IndexMatch]]:
    return [sorted(await index.lookup(scope, HASHES, now), key=lambda match: match.prefix_hash) for scope in scopes]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=operations)
async def test_sql_backends_agree_with_the_memory_index(sql_index: CacheIndex, operations: list[Operation]) -> None:
    example = next(_example_ids)
    scopes = [CacheScope(f"principal-{example}-{n}", "qwen", "sha256:v1") for n in range(2)]
    reference = MemoryIndex()
    now = 1_750_000_000.0

    for operation in operations:
        now += operation.advance
        await apply(reference, operation.action, scopes, now)
        await apply(sql_index, operation.action, scopes, now)
        assert await visible(sql_index, scopes, now) == await visible(reference, scopes, now)
