"""Classification (SPEC §6): from the index's matches and the token counts to the cache split.

Plain inputs, plain outputs; the shell does the I/O in between:
``lookup_candidates`` → index lookup → ``deepest_hit`` → ``blocks_to_count`` → token counter →
(``blocks_to_verify``, ``deepest_hit`` again with the counts) → ``decide``.

Templates that rewrite earlier turns (Qwen3 and DeepSeek drop the reasoning of turns before
the last user query; Mistral moves the system prompt into the last user message) render the
same blocks differently once later messages arrive: the prefix a match names is then no
longer the prefix this prompt sends, and its stored count is not what this prompt holds.
Whenever the prompt is counted anyway, each match's stored count is checked against this
rendering's count at its block, and a match that disagrees is stale — not a hit. Like
Anthropic, a rewrite invalidates the cache from the rewritten turn on; the tokens the
template dropped are never billed as read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final

from cachegate.core.types import (
    Breakpoint,
    CacheMiss,
    CacheScope,
    CacheStats,
    CacheTariff,
    Classification,
    IndexEntry,
    IndexMatch,
    MissReason,
    ParsedPrompt,
    Refresh,
)

LOOKBACK: Final = 20
"""Block positions looked at per breakpoint, the breakpoint's own included (Anthropic's rule)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """The deepest live match: the prompt's prefix ending at ``block`` is cached."""

    block: int
    match: IndexMatch


def lookup_candidates(prompt: ParsedPrompt, lookback: int = LOOKBACK) -> list[bytes]:
    """The prefix hashes worth looking up: each breakpoint's and those of up to ``lookback - 1``
    blocks before it, without repeats, longest prefix first."""
    positions: set[int] = set()
    for breakpoint_ in prompt.breakpoints:
        positions.update(range(max(0, breakpoint_.block - lookback + 1), breakpoint_.block + 1))
    return [prompt.prefix_hashes[block] for block in sorted(positions, reverse=True)]


def deepest_hit(
    prompt: ParsedPrompt,
    matches: Iterable[IndexMatch],
    counts: Mapping[int, int] | None = None,
    dropped: AbstractSet[int] = frozenset(),
) -> Hit | None:
    """The match that covers the longest prefix of ``prompt``.

    Every block has its own hash, so a match names exactly one position. Matches of hashes that
    are not a prefix of this prompt, or lie past its deepest breakpoint, are ignored. With
    ``counts`` (this prompt's cumulative counts, at least at ``blocks_to_verify``), a match
    whose stored count differs from this prompt's count at its block is stale and ignored too,
    and so is a match at a ``dropped`` block: the template leaves its text out of this prompt.
    """
    best: Hit | None = None
    for block, match in matched_blocks(prompt, matches).items():
        if block in dropped:
            continue
        if counts is not None and counts.get(block, match.cumulative_tokens) != match.cumulative_tokens:
            continue
        if best is None or block > best.block:
            best = Hit(block, match)
    return best


def blocks_to_verify(prompt: ParsedPrompt, matches: Iterable[IndexMatch]) -> list[int]:
    """The blocks whose counts ``deepest_hit`` checks the matches against, and ``decide`` then
    needs whichever match survives: every matched block and every breakpoint, in order."""
    blocks = set(matched_blocks(prompt, matches)) | {breakpoint_.block for breakpoint_ in prompt.breakpoints}
    return sorted(blocks)


def matched_blocks(prompt: ParsedPrompt, matches: Iterable[IndexMatch]) -> dict[int, IndexMatch]:
    if not prompt.breakpoints:
        return {}
    deepest = prompt.breakpoints[-1].block
    positions = {digest: block for block, digest in enumerate(prompt.prefix_hashes[: deepest + 1])}
    matched: dict[int, IndexMatch] = {}
    for match in matches:
        block = positions.get(match.prefix_hash)
        if block is not None:
            matched[block] = match
    return matched


def blocks_to_count(prompt: ParsedPrompt, hit: Hit | None) -> list[int]:
    """The breakpoint blocks deeper than the hit, in order: their cumulative counts are needed."""
    return [breakpoint_.block for breakpoint_ in _past(prompt, hit)]


def _past(prompt: ParsedPrompt, hit: Hit | None) -> list[Breakpoint]:
    """The breakpoints deeper than the hit: the ones that write."""
    depth = -1 if hit is None else hit.block
    return [breakpoint_ for breakpoint_ in prompt.breakpoints if breakpoint_.block > depth]


def decide(
    scope: CacheScope,
    prompt: ParsedPrompt,
    hit: Hit | None,
    counts: Mapping[int, int],
    tariff: CacheTariff,
    now: float,
    dropped: AbstractSet[int] = frozenset(),
) -> Classification:
    """The split to report and the index work to do (§6.2-6.5).

    ``counts`` maps each block of ``blocks_to_count`` to its cumulative token count, but for the
    ``dropped`` ones, whose text the template leaves out: such a breakpoint writes nothing and
    is credited nothing. Any other missing count raises ``ValueError`` (the shell degrades).
    Each breakpoint past the hit writes an entry
    and is credited ``cum(bp) - cum(previous breakpoint or hit)`` to its TTL tier, which with
    the TTL order rule is Anthropic's A/B/C accounting. Counts that go backwards (they should not)
    credit nothing rather than crediting the same tokens twice.
    """
    if not prompt.breakpoints:
        return Classification()
    read = 0 if hit is None else hit.match.cumulative_tokens
    writing = [breakpoint_ for breakpoint_ in _past(prompt, hit) if breakpoint_.block not in dropped]
    missing = [breakpoint_.block for breakpoint_ in writing if breakpoint_.block not in counts]
    if missing:
        raise ValueError(f"no token count for breakpoint blocks {missing}")
    deepest_count = counts[writing[-1].block] if writing else read
    if deepest_count < tariff.min_prefix_tokens:
        return Classification(miss=CacheMiss(MissReason.BELOW_FLOOR))

    stats = CacheStats(read=read)
    writes: list[IndexEntry] = []
    covered = read
    for breakpoint_ in writing:
        cumulative = counts[breakpoint_.block]
        stats.add_creation(breakpoint_.ttl, max(0, cumulative - covered))
        covered = max(covered, cumulative)
        writes.append(
            IndexEntry(
                scope=scope,
                prefix_hash=prompt.prefix_hashes[breakpoint_.block],
                cumulative_tokens=cumulative,
                ttl=breakpoint_.ttl,
                expires_at=now + breakpoint_.ttl.seconds,
            )
        )
    refresh = None
    if hit is not None:
        refresh = Refresh(scope, hit.match.prefix_hash, now + hit.match.ttl.seconds)
    return Classification(stats=stats, writes=writes, refresh=refresh)
