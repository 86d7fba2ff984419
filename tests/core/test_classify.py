"""Classification (SPEC §6): candidates, the deepest hit, and the read/creation split."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.blocks import parse_prompt
from cachegate.core.classify import (
    Hit,
    blocks_to_count,
    blocks_to_verify,
    decide,
    deepest_hit,
    lookup_candidates,
)
from cachegate.core.types import (
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
    TtlTier,
)

from .bodies import ALL_TTLS, DEFAULT, PROPERTY, chat, marker, msg, text

SCOPE = CacheScope("principal-1", "cache-model", "sha256:v1")
TARIFF = CacheTariff()  # floor 1024
NOW = 1_000_000.0
BELOW_FLOOR = Classification(miss=CacheMiss(MissReason.BELOW_FLOOR))  # nothing read or written, and why
HOUR, FIVE_MINUTES = TtlTier.ONE_HOUR, TtlTier.FIVE_MINUTES


def system_then_user() -> ParsedPrompt:
    """The reference classifier's request: a system block marked 1h, then user "hello"."""
    return parse_prompt(chat(msg("system", [text("static system", marker("1h"))]), msg("user", "hello")), DEFAULT)


def conversation(blocks: int, marked: dict[int, str]) -> ParsedPrompt:
    """One text block per message; ``marked`` maps a block to its marker's TTL."""
    parts = [msg("user", [text(f"turn {i}", marker(marked[i]) if i in marked else None)]) for i in range(blocks)]
    return parse_prompt(chat(*parts), ALL_TTLS)


def match(prompt: ParsedPrompt, block: int, tokens: int, ttl: TtlTier = HOUR) -> IndexMatch:
    return IndexMatch(prompt.prefix_hashes[block], tokens, ttl, NOW + 60)


def index_answer(prompt: ParsedPrompt, stored: Iterable[IndexMatch]) -> list[IndexMatch]:
    """What an index returns: the stored matches whose hash was asked for."""
    asked = set(lookup_candidates(prompt))
    return [entry for entry in stored if entry.prefix_hash in asked]


class TestCandidates:
    def test_twenty_positions_longest_first(self) -> None:
        prompt = conversation(25, {24: "5m"})
        assert lookup_candidates(prompt) == [prompt.prefix_hashes[i] for i in range(24, 4, -1)]

    def test_windows_are_joined_without_repeats(self) -> None:
        prompt = conversation(40, {5: "5m", 10: "5m", 39: "5m"})
        expected = [*range(39, 19, -1), *range(10, -1, -1)]
        assert lookup_candidates(prompt) == [prompt.prefix_hashes[i] for i in expected]

    def test_lookback_is_a_parameter(self) -> None:
        prompt = conversation(10, {9: "5m"})
        assert lookup_candidates(prompt, lookback=3) == [prompt.prefix_hashes[i] for i in (9, 8, 7)]

    def test_no_breakpoints_no_candidates(self) -> None:
        assert lookup_candidates(conversation(3, {})) == []


class TestDeepestHit:
    def test_the_deepest_match_wins(self) -> None:
        prompt = conversation(10, {4: "1h", 9: "5m"})
        matches = [match(prompt, 2, 100), match(prompt, 7, 700), match(prompt, 4, 400)]
        assert deepest_hit(prompt, matches) == Hit(7, matches[1])

    def test_unknown_hashes_and_matches_past_the_deepest_breakpoint_are_ignored(self) -> None:
        prompt = conversation(10, {4: "1h"})
        stray = IndexMatch(b"\x00" * 32, 5000, HOUR, NOW + 60)
        assert deepest_hit(prompt, [stray, match(prompt, 8, 800)]) is None
        assert deepest_hit(prompt, [stray, match(prompt, 3, 300)]) == Hit(3, match(prompt, 3, 300))

    def test_no_match_no_hit(self) -> None:
        assert deepest_hit(conversation(3, {2: "5m"}), []) is None

    def test_a_hit_nineteen_blocks_back_is_found(self) -> None:
        prompt = conversation(30, {29: "5m"})
        stored = [match(prompt, 10, 1500)]
        assert deepest_hit(prompt, index_answer(prompt, stored)) == Hit(10, stored[0])

    def test_a_write_twenty_blocks_back_is_out_of_reach(self) -> None:
        prompt = conversation(30, {29: "5m"})
        assert deepest_hit(prompt, index_answer(prompt, [match(prompt, 9, 1500)])) is None


class TestVerifiedHit:
    """A match whose stored count differs from this rendering's count is stale (the template rewrote it)."""

    def test_a_match_that_agrees_with_the_counts_holds(self) -> None:
        prompt = conversation(10, {4: "1h", 9: "5m"})
        matches = [match(prompt, 4, 400), match(prompt, 7, 700)]
        assert deepest_hit(prompt, matches, {4: 400, 7: 700, 9: 900}) == Hit(7, matches[1])

    def test_a_stale_match_gives_way_to_the_deepest_one_that_holds(self) -> None:
        prompt = conversation(10, {4: "1h", 9: "5m"})
        matches = [match(prompt, 4, 400), match(prompt, 7, 700)]
        assert deepest_hit(prompt, matches, {4: 400, 7: 650, 9: 850}) == Hit(4, matches[0])
        assert deepest_hit(prompt, matches, {4: 390, 7: 650, 9: 850}) is None

    def test_a_match_without_a_count_is_taken_as_it_is(self) -> None:
        prompt = conversation(10, {9: "5m"})
        matches = [match(prompt, 7, 700)]
        assert deepest_hit(prompt, matches, {9: 900}) == Hit(7, matches[0])

    def test_a_match_at_a_block_the_template_leaves_out_is_stale(self) -> None:
        prompt = conversation(10, {4: "1h", 9: "5m"})
        matches = [match(prompt, 4, 400), match(prompt, 2, 200)]
        assert deepest_hit(prompt, matches, {2: 200, 9: 900}, dropped={4}) == Hit(2, matches[1])

    def test_the_blocks_to_verify_are_every_matched_block_and_every_breakpoint(self) -> None:
        prompt = conversation(30, {4: "1h", 29: "5m"})
        stray = IndexMatch(b"\x00" * 32, 5000, HOUR, NOW + 60)
        matches = [match(prompt, 12, 1200), stray, match(prompt, 2, 200)]
        assert blocks_to_verify(prompt, matches) == [2, 4, 12, 29]
        assert blocks_to_verify(conversation(3, {}), matches) == []

    def test_another_breakpoint_brings_an_old_write_back_in_reach(self) -> None:
        prompt = conversation(30, {12: "5m", 29: "5m"})
        stored = [match(prompt, 9, 1500)]
        assert deepest_hit(prompt, index_answer(prompt, stored)) == Hit(9, stored[0])


class TestBlocksToCount:
    def test_every_breakpoint_without_a_hit(self) -> None:
        assert blocks_to_count(conversation(10, {2: "1h", 6: "5m", 9: "5m"}), None) == [2, 6, 9]

    def test_only_those_past_the_hit(self) -> None:
        prompt = conversation(10, {2: "1h", 6: "5m", 9: "5m"})
        assert blocks_to_count(prompt, Hit(6, match(prompt, 6, 600))) == [9]
        assert blocks_to_count(prompt, Hit(4, match(prompt, 4, 400))) == [6, 9]
        assert blocks_to_count(prompt, Hit(9, match(prompt, 9, 900))) == []


class TestDecide:
    def test_no_prior_entry_is_all_creation(self) -> None:
        prompt = system_then_user()
        result = decide(SCOPE, prompt, None, {0: 1500}, TARIFF, NOW)
        assert result == Classification(
            stats=CacheStats(read=0, creation_1h=1500),
            writes=[IndexEntry(SCOPE, prompt.prefix_hashes[0], 1500, HOUR, NOW + 3600)],
        )

    def test_a_read_hit_is_a_pure_read_with_refresh(self) -> None:
        prompt = system_then_user()
        hit = Hit(0, match(prompt, 0, 1500))
        result = decide(SCOPE, prompt, hit, {}, TARIFF, NOW)
        assert result == Classification(
            stats=CacheStats(read=1500), refresh=Refresh(SCOPE, prompt.prefix_hashes[0], NOW + 3600)
        )

    def test_the_refresh_uses_the_stored_entrys_ttl(self) -> None:
        prompt = system_then_user()
        hit = Hit(0, match(prompt, 0, 1500, FIVE_MINUTES))
        assert decide(SCOPE, prompt, hit, {}, TARIFF, NOW).refresh == Refresh(SCOPE, prompt.prefix_hashes[0], NOW + 300)

    def test_below_the_floor_is_nothing(self) -> None:
        assert decide(SCOPE, system_then_user(), None, {0: 500}, TARIFF, NOW) == BELOW_FLOOR

    def test_a_hit_below_the_floor_is_neither_read_nor_refreshed(self) -> None:
        prompt = system_then_user()
        assert decide(SCOPE, prompt, Hit(0, match(prompt, 0, 500)), {}, TARIFF, NOW) == BELOW_FLOOR

    def test_the_floor_is_the_deepest_breakpoints_count(self) -> None:
        prompt = conversation(4, {1: "1h", 3: "5m"})
        result = decide(SCOPE, prompt, None, {1: 600, 3: 1100}, TARIFF, NOW)
        assert result.stats == CacheStats(creation_1h=600, creation_5m=500)

    def test_no_markers_is_nothing(self) -> None:
        prompt = parse_prompt(chat(msg("user", "hello")), DEFAULT)
        assert decide(SCOPE, prompt, None, {}, TARIFF, NOW) == Classification()

    def test_anthropics_a_b_c_accounting(self) -> None:
        prompt = conversation(6, {1: "1h", 5: "5m"})
        result = decide(SCOPE, prompt, None, {1: 2000, 5: 3000}, TARIFF, NOW)
        assert result.stats == CacheStats(read=0, creation_1h=2000, creation_5m=1000)
        assert result.writes == [
            IndexEntry(SCOPE, prompt.prefix_hashes[1], 2000, HOUR, NOW + 3600),
            IndexEntry(SCOPE, prompt.prefix_hashes[5], 3000, FIVE_MINUTES, NOW + 300),
        ]
        assert result.refresh is None

    def test_a_hit_between_breakpoints_credits_only_what_lies_past_it(self) -> None:
        prompt = conversation(6, {1: "1h", 5: "5m"})
        hit = Hit(3, match(prompt, 3, 2500))
        result = decide(SCOPE, prompt, hit, {5: 3000}, TARIFF, NOW)
        assert result.stats == CacheStats(read=2500, creation_5m=500)
        assert [entry.prefix_hash for entry in result.writes] == [prompt.prefix_hashes[5]]
        assert result.refresh == Refresh(SCOPE, prompt.prefix_hashes[3], NOW + 3600)

    def test_counts_that_go_backwards_are_not_credited_twice(self) -> None:
        prompt = conversation(6, {1: "1h", 3: "5m", 5: "5m"})
        result = decide(SCOPE, prompt, None, {1: 2000, 3: 1900, 5: 2100}, TARIFF, NOW)
        assert result.stats == CacheStats(creation_1h=2000, creation_5m=100)

    def test_a_breakpoint_the_template_leaves_out_writes_and_credits_nothing(self) -> None:
        prompt = conversation(6, {1: "1h", 3: "1h", 5: "5m"})
        result = decide(SCOPE, prompt, None, {1: 2000, 5: 2500}, TARIFF, NOW, dropped={3})
        assert result.stats == CacheStats(creation_1h=2000, creation_5m=500)
        assert [entry.prefix_hash for entry in result.writes] == [prompt.prefix_hashes[1], prompt.prefix_hashes[5]]

    def test_when_every_breakpoint_is_left_out_nothing_is_cached(self) -> None:
        assert decide(SCOPE, system_then_user(), None, {}, TARIFF, NOW, dropped={0}) == BELOW_FLOOR

    def test_a_missing_count_is_an_error(self) -> None:
        prompt = conversation(6, {1: "1h", 5: "5m"})
        with pytest.raises(ValueError, match=r"\[5\]"):
            decide(SCOPE, prompt, None, {1: 2000}, TARIFF, NOW)

    def test_the_tariff_floor_is_honoured(self) -> None:
        prompt = system_then_user()
        assert decide(SCOPE, prompt, None, {0: 1500}, CacheTariff(min_prefix_tokens=2048), NOW) == BELOW_FLOOR
        assert decide(SCOPE, prompt, None, {0: 10}, CacheTariff(min_prefix_tokens=0), NOW).stats.creation_1h == 10

    @PROPERTY
    @given(st.data())
    def test_read_plus_creation_is_the_deepest_count(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(2, 30))
        marked = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=4, unique=True))
        prompt = conversation(size, {block: "5m" for block in marked})
        steps = data.draw(st.lists(st.integers(0, 2000), min_size=size, max_size=size))
        cumulative = [sum(steps[: i + 1]) for i in range(size)]
        hit_block = data.draw(st.none() | st.integers(0, max(marked)))
        hit = None if hit_block is None else Hit(hit_block, match(prompt, hit_block, cumulative[hit_block]))
        counts = {block: cumulative[block] for block in blocks_to_count(prompt, hit)}
        result = decide(SCOPE, prompt, hit, counts, TARIFF, NOW)
        deepest = cumulative[max(marked)]
        if deepest < TARIFF.min_prefix_tokens:
            assert result == BELOW_FLOOR
        else:
            assert result.stats.read + result.stats.creation == deepest
            assert len(result.writes) == len(counts)
