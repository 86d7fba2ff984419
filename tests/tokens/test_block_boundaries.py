"""Cumulative counts at block boundaries: where a block ends in the rendering, and which tokens lie before it."""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts
from cachegate.tokens.counter import ChatTokenCounter, CountOptions
from cachegate.tokens.registry import hf_counter, qwen3_counter
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tally import prefix_boundaries

PromptOf = Callable[[dict[str, Any]], ParsedPrompt]

CONVERSATION: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You are a careful assistant. Übung macht den Meister."},
        {"role": "user", "content": [{"type": "text", "text": "第一部分"}, {"type": "text", "text": "second part 🙂"}]},
        {"role": "assistant", "content": "Noted. 👨‍👩‍👧"},
        {"role": "user", "content": "And then?"},
    ]
}


@pytest.fixture(scope="module")
def unjoined() -> ChatTokenCounter:
    """Multi-part text glued with no separator: words and characters run across part boundaries."""
    return qwen3_counter(CountOptions(content_join=""))


def test_count_at_a_token_aligned_boundary_is_the_count_of_the_text_before_it(
    qwen3: ChatTokenCounter, qwen3_tokenizer: Tokenizer, prompt_of: PromptOf
) -> None:
    prompt = prompt_of(CONVERSATION)
    blocks = range(len(prompt.blocks))
    rendering = qwen3.render(CONVERSATION, prompt, blocks)
    ids = qwen3_tokenizer.encode(rendering.text, add_special_tokens=False).ids

    counts = qwen3.count_blocking(CONVERSATION, prompt, blocks)

    for block, boundary in rendering.boundaries.items():
        before = qwen3_tokenizer.encode(rendering.text[:boundary], add_special_tokens=False).ids
        assert ids[: len(before)] == before  # in this conversation every block ends on a token boundary
        assert counts.cumulative[block] == len(before)
    assert counts.total == len(ids)


def test_boundaries_are_the_ends_of_the_blocks_texts(qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    prompt = prompt_of(CONVERSATION)

    rendering = qwen3.render(CONVERSATION, prompt, range(len(prompt.blocks)))

    ends = [rendering.text[: rendering.boundaries[b]] for b in range(len(prompt.blocks))]
    assert ends[0].endswith("<|im_start|>system\nYou are a careful assistant. Übung macht den Meister.")
    assert ends[1].endswith("<|im_start|>user\n第一部分")
    assert ends[2].endswith("<|im_start|>user\n第一部分\nsecond part 🙂")
    assert ends[3].endswith("<|im_start|>assistant\nNoted. 👨‍👩‍👧")
    assert ends[4].endswith("<|im_start|>user\nAnd then?")


def test_a_token_straddling_the_boundary_belongs_to_what_follows(
    unjoined: ChatTokenCounter, qwen3_tokenizer: Tokenizer, prompt_of: PromptOf
) -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]
    }
    prompt = prompt_of(body)
    header = len(qwen3_tokenizer.encode("<|im_start|>user\n", add_special_tokens=False).ids)

    counts = unjoined.count_blocking(body, prompt, [0, 1])

    assert counts.cumulative == {0: header, 1: header + 1}  # "hello" is one token, after the first part


def test_a_character_split_over_tokens_is_never_cut(
    unjoined: ChatTokenCounter, qwen3_tokenizer: Tokenizer, prompt_of: PromptOf
) -> None:
    # Byte-level BPE encodes "🍕ん" as [first bytes of 🍕] [last byte of 🍕 + ん]: the first token
    # ends inside the first part, but taking it alone would cut the pizza in half.
    pieces = qwen3_tokenizer.encode("🍕ん", add_special_tokens=False)
    assert pieces.offsets == [(0, 1), (0, 2)]
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "🍕"}, {"type": "text", "text": "ん"}]}]}
    header = len(qwen3_tokenizer.encode("<|im_start|>user\n", add_special_tokens=False).ids)

    counts = unjoined.count_blocking(body, prompt_of(body), [0, 1])

    assert counts.cumulative == {0: header, 1: header + 2}


def test_system_rendered_before_the_tools_gives_the_tools_no_prefix_of_their_own(
    qwen3: ChatTokenCounter, prompt_of: PromptOf
) -> None:
    # Qwen3 renders the system message first, then the tools: a prefix ending at a tool would
    # include the system text, which is not part of it. Only the template's opening precedes it.
    tool = {"type": "function", "function": {"name": "f", "description": "Does f.", "parameters": {}}}
    body = {"tools": [tool], "messages": [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Go."}]}
    prompt = prompt_of(body)

    rendering = qwen3.render(body, prompt, [0, 1, 2])

    assert rendering.boundaries[0] == 0
    assert rendering.text[: rendering.boundaries[1]].endswith('"description": "Does f.", "parameters": {}}}')
    assert rendering.text[: rendering.boundaries[2]].endswith("<|im_start|>user\nGo.")


AGENT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "Read",
        "description": "Reads a file from the local filesystem. The file_path must be absolute.",
        "parameters": {
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "The absolute path to the file to read"},
                "limit": {"type": "number", "description": "The number of lines to read."},
            },
            "required": ["file_path"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def qwen3_by_jinja() -> ChatTokenCounter:
    """The shipped template rendered by jinja and counted by the sentinel method (no native layout)."""
    files = qwen3_files()
    return hf_counter(files.tokenizer_json, files.chat_template + "{#- no native layout #}", files.special_tokens)


@pytest.mark.parametrize("system", [False, True], ids=["tool breakpoint", "system breakpoint covering the tools"])
@pytest.mark.parametrize("native", [True, False], ids=["layout", "sentinel"])
def test_a_tool_breakpoint_counts_the_tool_through_its_closing_brace(
    qwen3: ChatTokenCounter,
    qwen3_by_jinja: ChatTokenCounter,
    qwen3_tokenizer: Tokenizer,
    prompt_of: PromptOf,
    system: bool,
    native: bool,
) -> None:
    # The count used to stop at the tool's last string ("file_path), leaving `"], "additionalProperties":
    # false}}}` to what follows: a tool breakpoint cached less than the tool.
    marker = {"type": "ephemeral"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Read README.md"}]
    if system:
        system_part = {"type": "text", "text": "Be brief.", "cache_control": marker}
        messages.insert(0, {"role": "system", "content": [system_part]})
    body = {"tools": [{**AGENT_TOOL, "cache_control": marker}], "messages": messages}
    counter = qwen3 if native else qwen3_by_jinja
    prompt = prompt_of(body)
    breakpoint_block = prompt.breakpoints[-1].block
    tool_json = json.dumps(AGENT_TOOL, ensure_ascii=False)  # as Qwen3's `tool | tojson` writes it
    text = counter.render(body, prompt, [breakpoint_block]).text
    through_the_tool = text[: text.index(tool_json) + len(tool_json)]

    counts = counter.count_blocking(body, prompt, [breakpoint_block])

    expected = len(qwen3_tokenizer.encode(through_the_tool, add_special_tokens=False))
    assert counts.cumulative[breakpoint_block] == expected
    assert counts.method == ("layout" if native else "sentinel")


def test_blocks_without_text_end_where_the_block_before_them_ends(qwen3: ChatTokenCounter, prompt_of: PromptOf) -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
            {"role": "assistant", "content": None},
            {"role": "user", "content": ""},
        ]
    }
    prompt = prompt_of(body)

    boundaries = qwen3.render(body, prompt, [0, 1, 2, 3]).boundaries

    assert boundaries[1] == boundaries[2] == boundaries[3] == boundaries[0]


def test_each_image_costs_the_configured_tokens_from_its_block_on(prompt_of: PromptOf) -> None:
    counter = qwen3_counter(CountOptions(image_tokens=100))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, image, {"type": "text", "text": "b"}, image]}
        ]
    }
    plain = qwen3_counter(CountOptions()).count_blocking(body, prompt_of(body), [0, 1, 2, 3])

    counts = counter.count_blocking(body, prompt_of(body), [0, 1, 2, 3])

    assert [counts.cumulative[b] - plain.cumulative[b] for b in range(4)] == [0, 100, 100, 200]
    assert plain.total is not None
    assert counts.total == plain.total + 200


async def test_count_runs_in_a_worker_thread_and_survives_aclose(
    qwen3: ChatTokenCounter, prompt_of: PromptOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = qwen3_counter(CountOptions())
    prompt = prompt_of(CONVERSATION)
    threads: list[str] = []
    blocking = counter.count_blocking

    def recording(*args: Any) -> PromptCounts:
        threads.append(threading.current_thread().name)
        return blocking(*args)

    monkeypatch.setattr(counter, "count_blocking", recording)

    first = await counter.count(CONVERSATION, prompt, [1, 4])
    await counter.aclose()
    second = await counter.count(CONVERSATION, prompt, [1, 4])
    await counter.aclose()

    assert first == second == qwen3.count_blocking(CONVERSATION, prompt, [1, 4])
    assert len(threads) == 2
    assert all(name.startswith("cachegate-tokens") for name in threads)


# -- property: counted tokens always decode to a prefix of the text before the boundary ---------

# Characters whose UTF-8 bytes byte-level BPE merges across character borders (🍕ん is two
# tokens: [🍕's first bytes] [🍕's last byte + ん]), combining marks, joiners, whitespace.
_TRICKY = st.sampled_from(list("🍕🍇🍏🌼🌕🌈🙂んち丫丙严∑국어é\u0301\u200d\n\t '"))
_text = st.lists(
    st.one_of(
        st.text(st.one_of(_TRICKY, st.characters(blacklist_categories=("Cs", "Co", "Cn"))), max_size=10),
        st.sampled_from(["<|im_end|>", "'s", "\r\n"]),
    ),
    max_size=3,
).map("".join)
# Whole parts that end or start with such characters, so glued parts cut them apart.
_part_text = st.one_of(_text, st.sampled_from(["🍕", "ん", "丕", "ん🍕"]))
_part = _part_text.map(lambda text: {"type": "text", "text": text})
_content = st.one_of(_text, st.lists(_part, min_size=1, max_size=4))
_tool = _text.map(lambda text: {"type": "function", "function": {"name": "t", "description": text}})


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    roles = draw(st.lists(st.sampled_from(["user", "assistant"]), max_size=4))
    messages = [{"role": "system", "content": draw(_content)}] if draw(st.booleans()) else []
    messages += [{"role": role, "content": draw(_content)} for role in roles]
    messages.append({"role": "user", "content": draw(_content)})  # assistant turns before the last query
    return {"messages": messages, "tools": draw(st.lists(_tool, max_size=2))}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_bodies(), glued=st.booleans())
def test_counted_tokens_decode_to_a_prefix_of_the_text_before_the_boundary(
    body: dict[str, Any],
    glued: bool,
    qwen3: ChatTokenCounter,
    unjoined: ChatTokenCounter,
    qwen3_tokenizer: Tokenizer,
    prompt_of: PromptOf,
) -> None:
    counter = unjoined if glued else qwen3
    prompt = prompt_of(body)
    blocks = range(len(prompt.blocks))

    rendering = counter.render(body, prompt, blocks)
    counts = counter.count_blocking(body, prompt, blocks)

    ids = qwen3_tokenizer.encode(rendering.text, add_special_tokens=False).ids
    assert counts.total == len(ids)
    previous = 0
    for block in blocks:
        count, boundary = counts.cumulative[block], rendering.boundaries[block]
        before = unicodedata.normalize("NFC", rendering.text[:boundary])
        assert before.startswith(qwen3_tokenizer.decode(ids[:count], skip_special_tokens=False))
        if count < len(ids):  # the next token does not fit before the boundary
            assert not before.startswith(qwen3_tokenizer.decode(ids[: count + 1], skip_special_tokens=False))
        assert count >= previous
        previous = count


def _prefix_boundaries_by_definition(found: list[tuple[int, int]], asked: set[int]) -> dict[int, int]:
    """The rule read literally, one pass over every occurrence for each asked-for block."""
    occurrences = []
    previous = 0
    for block, offset in found:
        occurrences.append((block, offset, previous))
        previous = offset
    boundaries = {}
    for block in asked:
        later = min((start for b, _, start in occurrences if b > block), default=float("inf"))
        boundaries[block] = max((end for b, end, _ in occurrences if b <= block and end <= later), default=0)
    return boundaries


@settings(max_examples=500)
@given(st.data())
def test_the_fast_prefix_boundaries_follow_the_rule(data: st.DataObject) -> None:
    blocks = data.draw(st.integers(min_value=1, max_value=12))
    marked = sorted(data.draw(st.sets(st.integers(0, blocks - 1), min_size=1)))
    # Marks in text order: mostly in block order, with repeats and reorderings as templates make them.
    numbers = data.draw(st.lists(st.integers(0, len(marked) - 1), max_size=20))
    gaps = data.draw(st.lists(st.integers(0, 5), min_size=len(numbers), max_size=len(numbers)))
    found, offset = [], 0
    for n, gap in zip(numbers, gaps, strict=True):
        offset += gap
        found.append((marked[n], offset))
    asked = data.draw(st.sets(st.integers(0, blocks - 1)))

    assert prefix_boundaries(found, asked) == _prefix_boundaries_by_definition(found, asked)
