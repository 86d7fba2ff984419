"""The fake upstream's prefix KV cache (fake_prefix_cache.py): vLLM's hits, in whole 16-token blocks."""

from __future__ import annotations

from typing import Any

import openai

from cachegate.fake_prefix_cache import PrefixKvCache
from cachegate.fake_upstream import start_fake_upstream
from cachegate.tokens.registry import load_qwen3


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


async def test_a_fake_upstream_with_a_kv_cache_reports_its_hits_as_vllm_does() -> None:
    runner, port = await start_fake_upstream(load_qwen3(), "127.0.0.1", 0, kv_cache_blocks=256)
    messages = [
        {"role": "system", "content": "You answer questions about the build. " * 20},
        {"role": "user", "content": "Why did it fail?"},
    ]
    try:
        async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0) as sdk:

            async def cached(**options: Any) -> tuple[int, int]:
                answer = await sdk.chat.completions.create(model="m", messages=messages, max_tokens=2, **options)  # type: ignore[arg-type]
                assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
                return answer.usage.prompt_tokens_details.cached_tokens or 0, answer.usage.prompt_tokens

            first, prompt_tokens = await cached()
            second, _ = await cached()
            told, _ = await cached(extra_headers={"x-fake-behavior": "cached=7"})
            salted, _ = await cached(extra_body={"cache_salt": "another tenant"})

        assert first == 0
        assert second % 16 == 0 and prompt_tokens - 32 < second < prompt_tokens  # all but the last part block
        assert told == 7
        assert salted == 0
    finally:
        await runner.cleanup()
