"""Memoized counts: a prefix counted once is answered from memory, keyed by tokenizer version and prefix hash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cachegate.core.types import BlockKind, BlockRef, ParsedPrompt
from cachegate.tokens.base import PromptCounts, TokenCounter, TokenCountError
from cachegate.tokens.memo import MemoizedCounter

BODY: dict[str, Any] = {"messages": []}


class FakeCounter:
    """Counts block b as 10·(b+1) tokens and records every call."""

    def __init__(self) -> None:
        self.tokenizer_version = "sha256:fake"
        self.template_variables: frozenset[str] = frozenset()
        self.calls: list[tuple[bytes, ...]] = []
        self.closed = False

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        self.calls.append(tuple(prompt.prefix_hashes[b] for b in blocks))
        return PromptCounts(cumulative={b: 10 * (b + 1) for b in blocks}, total=99)

    async def aclose(self) -> None:
        self.closed = True


def prompt(*hashes: bytes) -> ParsedPrompt:
    refs = tuple(BlockRef(BlockKind.PART, i, 0) for i in range(len(hashes)))
    return ParsedPrompt(blocks=refs, prefix_hashes=hashes, breakpoints=())


def test_memoized_counter_is_a_token_counter() -> None:
    assert isinstance(MemoizedCounter(FakeCounter()), TokenCounter)


async def test_a_prefix_counted_before_is_not_counted_again() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    await memo.count(BODY, prompt(b"a", b"b", b"c"), [0, 2])

    again = await memo.count(BODY, prompt(b"a", b"b", b"c"), [0, 2])

    assert inner.calls == [(b"a", b"c")]
    assert again == PromptCounts(cumulative={0: 10, 2: 30}, total=None)


async def test_the_memory_is_keyed_by_prefix_hash_not_position() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    await memo.count(BODY, prompt(b"a", b"b", b"c"), [2])

    # Another request whose block 0 has the prefix hash of the first request's block 2.
    counts = await memo.count(BODY, prompt(b"c"), [0])

    assert len(inner.calls) == 1
    assert counts.cumulative == {0: 30}


async def test_any_new_prefix_counts_the_whole_request() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    await memo.count(BODY, prompt(b"a", b"b"), [0])

    counts = await memo.count(BODY, prompt(b"a", b"b"), [0, 1])
    await memo.count(BODY, prompt(b"a", b"b"), [1])

    assert inner.calls == [(b"a",), (b"a", b"b")]
    assert counts == PromptCounts(cumulative={0: 10, 1: 20}, total=99)


async def test_asking_for_no_block_always_counts_for_the_total() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)

    first = await memo.count(BODY, prompt(), [])
    second = await memo.count(BODY, prompt(), [])

    assert len(inner.calls) == 2
    assert first.total == second.total == 99


async def test_the_least_recently_used_prefix_is_forgotten_first() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner, max_entries=2)
    await memo.count(BODY, prompt(b"a"), [0])
    await memo.count(BODY, prompt(b"b"), [0])
    await memo.count(BODY, prompt(b"a"), [0])  # a is used again: b is now the oldest
    await memo.count(BODY, prompt(b"c"), [0])  # evicts b

    await memo.count(BODY, prompt(b"a"), [0])
    await memo.count(BODY, prompt(b"b"), [0])

    assert inner.calls == [(b"a",), (b"b",), (b"c",), (b"b",)]


async def test_a_new_tokenizer_version_does_not_reuse_old_counts() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    await memo.count(BODY, prompt(b"a"), [0])

    inner.tokenizer_version = "sha256:other"
    await memo.count(BODY, prompt(b"a"), [0])

    assert len(inner.calls) == 2
    assert memo.tokenizer_version == "sha256:other"


async def test_closing_the_memo_closes_the_inner_counter() -> None:
    inner = FakeCounter()

    await MemoizedCounter(inner).aclose()

    assert inner.closed


async def test_a_block_outside_the_prompt_is_refused() -> None:
    with pytest.raises(TokenCountError):
        await MemoizedCounter(FakeCounter()).count(BODY, prompt(b"a"), [1])


async def test_other_template_variables_do_not_reuse_counts() -> None:
    # chat_template_kwargs (enable_thinking, a date…) may change how the prefix renders, and no prefix hash covers them.
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    thinking = {"messages": [], "chat_template_kwargs": {"enable_thinking": True, "date": "x"}}
    same_in_other_order = {"messages": [], "chat_template_kwargs": {"date": "x", "enable_thinking": True}}
    await memo.count(BODY, prompt(b"a"), [0])
    await memo.count(thinking, prompt(b"a"), [0])

    await memo.count(same_in_other_order, prompt(b"a"), [0])
    await memo.count({"messages": [], "chat_template_kwargs": {}}, prompt(b"a"), [0])

    assert len(inner.calls) == 2


async def test_an_empty_tools_list_does_not_reuse_the_counts_of_no_tools() -> None:
    # No block to hash, but Llama 3.1's template writes a tools prompt for `tools: []`.
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    await memo.count({"messages": []}, prompt(b"a"), [0])
    await memo.count({"messages": [], "tools": []}, prompt(b"a"), [0])
    await memo.count({"messages": [], "tools": []}, prompt(b"a"), [0])

    assert len(inner.calls) == 2


async def test_variables_that_are_not_json_values_are_counted_and_not_remembered() -> None:
    inner = FakeCounter()
    memo = MemoizedCounter(inner)
    odd = {"messages": [], "chat_template_kwargs": {"at": object()}}

    await memo.count(odd, prompt(b"a"), [0])
    await memo.count(odd, prompt(b"a"), [0])

    assert len(inner.calls) == 2
