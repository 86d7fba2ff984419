"""The fake upstream's prefix KV cache (fake_prefix_cache.py): vLLM's hits, in whole 16-token blocks."""

from __future__ import annotations

from cachegate.fake_prefix_cache import PrefixKvCache


def prompt(*blocks: tuple[str, int]) -> list[tuple[bytes, int]]:
    return [(name.encode(), cumulative) for name, cumulative in blocks]


def test_a_repeated_prefix_hits_in_whole_blocks_up_to_where_the_prompts_differ() -> None:
    cache = PrefixKvCache(capacity=100)
    first = prompt(("a", 40), ("ab", 100))

    assert cache.serve(first) == 0
    assert cache.serve(first) == 96  # 6 whole blocks; the generation prompt is never cached
    assert cache.serve(prompt(("a", 40), ("ac", 100))) == 32  # blocks ending by token 40
    assert cache.serve(prompt(("a", 40), ("ab", 100), ("abd", 160))) == 96  # a conversation grown


def test_salts_keep_equal_prompts_apart() -> None:
    cache = PrefixKvCache(capacity=100)
    cache.serve(prompt(("a", 64)), salt="tenant-1")

    assert cache.serve(prompt(("a", 64)), salt="tenant-2") == 0
    assert cache.serve(prompt(("a", 64)), salt="tenant-1") == 64


def test_the_least_recently_used_blocks_are_evicted_first() -> None:
    cache = PrefixKvCache(capacity=4)
    cache.serve(prompt(("a", 32)))  # 2 blocks
    cache.serve(prompt(("b", 32)))  # 2 more: full
    cache.serve(prompt(("a", 32)))  # a is used again
    cache.serve(prompt(("c", 32)))  # evicts b, the least recently used

    assert len(cache) == 4
    assert cache.serve(prompt(("a", 32))) == 32
    assert cache.serve(prompt(("b", 32))) == 0
