"""Usage splicing, scrubbing and the cap (SPEC §6.6, §8)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.types import CacheStats
from cachegate.core.usage import (
    UPSTREAM_CACHE_FIELDS,
    cap_stats,
    scrub_usage,
    splice_usage,
    upstream_cached_tokens,
)

from .bodies import PROPERTY

STATS = CacheStats(read=1024, creation_5m=10, creation_1h=20, creation_24h=30)


def upstream_usage(**extra: Any) -> dict[str, Any]:
    """What an engine with its own prefix cache reports."""
    return {
        "prompt_tokens": 2000,
        "completion_tokens": 2,
        "total_tokens": 2002,
        "prompt_tokens_details": {"cached_tokens": 687, "audio_tokens": 0},
        **extra,
    }


class TestSplice:
    def test_writes_every_field_and_keeps_the_counts(self) -> None:
        usage = upstream_usage()
        assert splice_usage(usage, STATS, degraded=False) == STATS
        assert usage == {
            "prompt_tokens": 2000,
            "completion_tokens": 2,
            "total_tokens": 2002,
            "prompt_tokens_details": {
                "cached_tokens": 1024,
                "audio_tokens": 0,
                "cache_write_tokens": 60,
            },
            "cache_read_input_tokens": 1024,
            "cache_creation_input_tokens": 60,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 10,
                "ephemeral_1h_input_tokens": 20,
                "ephemeral_24h_input_tokens": 30,
            },
        }

    def test_zeros_are_written_when_nothing_was_cached(self) -> None:
        usage: dict[str, Any] = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        splice_usage(usage, CacheStats(), degraded=False)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
        assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
        assert set(usage["cache_creation"].values()) == {0}
        assert "cache_degraded" not in usage

    def test_degraded_is_flagged(self) -> None:
        usage = upstream_usage()
        splice_usage(usage, CacheStats(), degraded=True)
        assert usage["cache_degraded"] is True
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0

    def test_upstream_cache_fields_are_replaced(self) -> None:
        usage = upstream_usage(
            prompt_cache_hit_tokens=900,
            prompt_cache_miss_tokens=100,
            cache_discount=0.5,
            cache_creation={"ephemeral_5m_input_tokens": 99, "other": 1},
            cache_degraded=True,
        )
        splice_usage(usage, STATS, degraded=False)
        assert not {
            "prompt_cache_hit_tokens",
            "prompt_cache_miss_tokens",
            "cache_discount",
            "cache_degraded",
        } & set(usage)
        assert usage["cache_creation"] == {
            "ephemeral_5m_input_tokens": 10,
            "ephemeral_1h_input_tokens": 20,
            "ephemeral_24h_input_tokens": 30,
        }

    def test_null_details_are_replaced_by_an_object(self) -> None:
        usage: dict[str, Any] = {"prompt_tokens": 2000, "prompt_tokens_details": None}
        splice_usage(usage, STATS, degraded=False)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 1024, "cache_write_tokens": 60}

    def test_the_split_is_capped_to_prompt_tokens(self) -> None:
        usage = upstream_usage(prompt_tokens=1000)
        capped = splice_usage(usage, STATS, degraded=False)
        assert capped == CacheStats(read=1000)
        assert usage["cache_read_input_tokens"] == usage["prompt_tokens_details"]["cached_tokens"] == 1000
        assert usage["cache_creation_input_tokens"] == 0
        assert usage["prompt_tokens"] == 1000

    def test_no_prompt_count_caps_nothing(self) -> None:
        for prompt_tokens in (None, "2000", True):
            usage: dict[str, Any] = {"prompt_tokens": prompt_tokens}
            assert splice_usage(usage, STATS, degraded=False) == STATS


class TestScrub:
    def test_removes_upstream_cache_fields_and_keeps_the_rest(self) -> None:
        usage = upstream_usage(**{name: 1 for name in UPSTREAM_CACHE_FIELDS})
        usage["prompt_tokens_details"]["cache_write_tokens"] = 5
        scrub_usage(usage)
        assert usage == {
            "prompt_tokens": 2000,
            "completion_tokens": 2,
            "total_tokens": 2002,
            "prompt_tokens_details": {"audio_tokens": 0},
        }

    def test_leaves_clean_usage_alone(self) -> None:
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": 1,
            "total_tokens": 6,
            "prompt_tokens_details": None,
        }
        scrub_usage(usage)
        assert usage == {
            "prompt_tokens": 5,
            "completion_tokens": 1,
            "total_tokens": 6,
            "prompt_tokens_details": None,
        }


class TestUpstreamCachedTokens:
    def test_reads_prompt_tokens_details(self) -> None:
        assert upstream_cached_tokens(upstream_usage()) == 687

    def test_absent_or_not_an_integer_is_none(self) -> None:
        assert upstream_cached_tokens({"prompt_tokens": 5}) is None
        assert upstream_cached_tokens({"prompt_tokens_details": None}) is None
        for junk in ("687", 687.5, True):
            assert upstream_cached_tokens({"prompt_tokens_details": {"cached_tokens": junk}}) is None


class TestCap:
    def test_fits_is_unchanged_but_a_copy(self) -> None:
        capped = cap_stats(STATS, 2000)
        assert capped == STATS and capped is not STATS

    def test_exactly_at_prompt_is_unchanged(self) -> None:
        assert cap_stats(STATS, 1084) == STATS

    def test_creation_is_trimmed_5m_then_1h_then_24h(self) -> None:
        assert cap_stats(STATS, 1079) == CacheStats(read=1024, creation_5m=5, creation_1h=20, creation_24h=30)
        assert cap_stats(STATS, 1064) == CacheStats(read=1024, creation_5m=0, creation_1h=10, creation_24h=30)
        assert cap_stats(STATS, 1044) == CacheStats(read=1024, creation_5m=0, creation_1h=0, creation_24h=20)

    def test_then_the_read(self) -> None:
        assert cap_stats(STATS, 1000) == CacheStats(read=1000)
        assert cap_stats(STATS, 0) == CacheStats()

    def test_no_prompt_count_caps_nothing(self) -> None:
        assert cap_stats(STATS, None) == STATS

    def test_the_input_is_not_mutated(self) -> None:
        stats = copy.copy(STATS)
        cap_stats(stats, 10)
        assert stats == STATS

    @PROPERTY
    @given(
        st.builds(CacheStats, *[st.integers(0, 5000)] * 4),
        st.integers(0, 25_000),
    )
    def test_cap_trims_just_enough_and_never_adds(self, stats: CacheStats, prompt_tokens: int) -> None:
        capped = cap_stats(stats, prompt_tokens)
        assert capped.read + capped.creation == min(stats.read + stats.creation, prompt_tokens)
        assert capped.read <= stats.read
        for tier in ("creation_5m", "creation_1h", "creation_24h"):
            assert 0 <= getattr(capped, tier) <= getattr(stats, tier)
        if capped.read < stats.read:
            assert capped.creation == 0


def test_responses_usage_loses_the_upstreams_cached_tokens_and_keeps_it_for_the_ledger() -> None:
    usage = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 32},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 54,
    }
    assert upstream_cached_tokens(usage) == 32
    scrub_usage(usage)
    assert usage["input_tokens_details"] == {}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
