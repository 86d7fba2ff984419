"""Resumed counts equal counts from the start.

A count of a grown conversation starts from the checkpoint an earlier count of it left
(``resume.py``). Over sequences of requests, each made from the one before — turns appended, a
new query, a final answer, a message grown by a part or a call, messages taken back, other
template variables, another day —, every count of a counter that resumes must equal the count
of a counter that never does, or both must refuse. And agent turns, the traffic it is for,
must resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_strategies import PART, TEXT, TOOLS, VARIABLES, agent_conversation, agent_turn, chat_message, tool_call
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stopped_clock import StoppedClock, stopped_clock
from tokenizers import AddedToken, Tokenizer

import cachegate.tokens.template
from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts, TokenCountError
from cachegate.tokens.counter import ChatTokenCounter, CounterMemory
from cachegate.tokens.hf import HfPieces
from cachegate.tokens.pieces import PieceCounter
from cachegate.tokens.resume import Checkpoint, CheckpointStore
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tiktoken_pieces import named_encoding

POLICY = TtlPolicy.default_policy()
MARK = {"type": "ephemeral"}
TEMPLATES = Path(__file__).resolve().parents[1] / "tokens_parity" / "templates"
GPT_OSS = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
DEEPSEEK = (TEMPLATES / "deepseek-ai-DeepSeek-V3.1.jinja").read_text(encoding="utf-8")
QWEN3_TOKENIZER = Tokenizer.from_buffer(qwen3_files().tokenizer_json)
HARMONY = named_encoding("o200k_harmony")


def qwen(template: str, checkpoint_bytes: int) -> ChatTokenCounter:
    pieces = HfPieces(QWEN3_TOKENIZER, b"qwen3")
    memory = CounterMemory(checkpoints=checkpoint_bytes)
    return ChatTokenCounter(pieces, template, qwen3_files().special_tokens, memory=memory)


def with_special_tokens(specials: list[str]) -> Tokenizer:
    """Qwen3's vocabulary with another family's special tokens, so that renderings are cut as that family's are."""
    tokenizer = Tokenizer.from_buffer(qwen3_files().tokenizer_json)
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


LLAMA_TOKENIZER = with_special_tokens(
    ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"]
)
DEEPSEEK_TOKENIZER = with_special_tokens(
    [
        "<｜begin▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<｜end▁of▁sentence｜>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁output▁begin｜>",
        "<｜tool▁output▁end｜>",
    ]
)


def llama(checkpoint_bytes: int) -> ChatTokenCounter:
    pieces = HfPieces(LLAMA_TOKENIZER, b"llama")
    special_tokens = {"bos_token": "<|begin_of_text|>"}
    return ChatTokenCounter(pieces, LLAMA31, special_tokens, memory=CounterMemory(checkpoints=checkpoint_bytes))


def deepseek(checkpoint_bytes: int) -> ChatTokenCounter:
    pieces = HfPieces(DEEPSEEK_TOKENIZER, b"deepseek")
    special_tokens = {"bos_token": "<｜begin▁of▁sentence｜>"}
    return ChatTokenCounter(pieces, DEEPSEEK, special_tokens, memory=CounterMemory(checkpoints=checkpoint_bytes))


def gpt_oss(checkpoint_bytes: int) -> ChatTokenCounter:
    return ChatTokenCounter(HARMONY, GPT_OSS, {}, memory=CounterMemory(checkpoints=checkpoint_bytes))


# Made once: each keeps its checkpoints from one example to the next, so equal prefixes of
# different examples meet as those of different conversations do.
QWEN3 = qwen3_files().chat_template
QWEN25 = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
QWEN3_CODER = (TEMPLATES / "Qwen3-Coder.jinja").read_text(encoding="utf-8")
COUNTERS = {
    "qwen3": (qwen(QWEN3, 1 << 20), qwen(QWEN3, 0)),
    "qwen2.5": (qwen(QWEN25, 1 << 20), qwen(QWEN25, 0)),
    "llama3.1": (llama(1 << 20), llama(0)),
    "deepseek-v3.1": (deepseek(1 << 20), deepseek(0)),
    "qwen3-coder": (qwen(QWEN3_CODER, 1 << 20), qwen(QWEN3_CODER, 0)),
    "gpt-oss": (gpt_oss(1 << 20), gpt_oss(0)),
}


@pytest.fixture(scope="module", autouse=True)
def stopped() -> Iterator[None]:
    with stopped_clock(cachegate.tokens.template):  # gpt-oss writes today's date
        yield


def counted(counter: ChatTokenCounter, body: dict[str, Any], prompt: ParsedPrompt, asked: list[int]) -> Any:
    try:
        return counter.count_blocking(body, prompt, asked)
    except TokenCountError:
        return "refused"


def parsed(body: dict[str, Any]) -> ParsedPrompt | None:
    try:
        return parse_prompt(body, POLICY)
    except MarkerError:
        return None


def resumes(counter: ChatTokenCounter) -> list[bool]:
    """Spy on ``counter``: one entry per count, whether it resumed."""
    seen: list[bool] = []
    resumer = counter._resumer
    assert resumer is not None, "this counter does not resume"
    inner = resumer.resume

    def spied(*args: Any) -> PromptCounts | None:
        result = inner(*args)
        seen.append(result is not None)
        return result

    resumer.resume = spied  # type: ignore[method-assign]
    return seen


Edit = Callable[[dict[str, Any]], None]


@st.composite
def edit(draw: st.DrawFn) -> Edit:
    """One change to a request, as the next request of a conversation (or a branch of it) makes it."""
    kind = draw(st.sampled_from(["append", "turn", "result", "query", "answer", "part", "call", "back", "variables"]))
    if kind == "append":
        added = draw(st.lists(chat_message(), min_size=1, max_size=3))
        return lambda body: body["messages"].extend(copy.deepcopy(added))
    if kind == "turn":
        turn = draw(agent_turn())
        return lambda body: body["messages"].extend(copy.deepcopy(turn))
    if kind == "result":
        result = {"role": "tool", "tool_call_id": "c", "content": draw(TEXT)}
        return lambda body: body["messages"].append(dict(result))
    if kind == "query":
        query = {"role": "user", "content": draw(TEXT)}
        return lambda body: body["messages"].append(dict(query))
    if kind == "answer":
        answer = {"role": "assistant", "content": draw(TEXT)}
        return lambda body: body["messages"].append(dict(answer))
    if kind == "part":
        part = draw(PART)

        def add_part(body: dict[str, Any]) -> None:
            last = body["messages"][-1]
            content = last.get("content")
            last["content"] = [*(content if isinstance(content, list) else [{"type": "text", "text": content or ""}])]
            last["content"].append(copy.deepcopy(part))

        return add_part
    if kind == "call":
        call = draw(tool_call())

        def add_call(body: dict[str, Any]) -> None:
            last = body["messages"][-1]
            if last["role"] == "assistant":
                last["tool_calls"] = [*(last.get("tool_calls") or []), copy.deepcopy(call)]

        return add_call
    if kind == "back":
        taken = draw(st.integers(1, 2))
        return lambda body: body.update(messages=body["messages"][:-taken] or body["messages"][:1])
    variables = draw(VARIABLES)

    def set_variables(body: dict[str, Any]) -> None:
        body.pop("chat_template_kwargs", None)
        if variables is not None:
            body["chat_template_kwargs"] = variables

    return set_variables


@pytest.mark.parametrize("template", list(COUNTERS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(agent_conversation(), st.lists(chat_message(), min_size=1, max_size=5)),
    TOOLS,
    VARIABLES,
    st.lists(edit(), min_size=1, max_size=5),
    st.data(),
)
def test_a_resumed_count_is_the_count_from_the_start(
    template: str,
    messages: list[dict[str, Any]],
    tools: Any,
    variables: Any,
    edits: list[Edit],
    data: st.DataObject,
) -> None:
    resuming, from_the_start = COUNTERS[template]
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if tools is not None:
        body["tools"] = tools
    if variables is not None:
        body["chat_template_kwargs"] = variables
    asked: set[int] = set()
    for change in [lambda body: None, *edits]:
        body = copy.deepcopy(body)
        change(body)
        prompt = parsed(body)
        assume(prompt is not None)
        assert prompt is not None
        last = len(prompt.blocks) - 1
        # As the classifier asks: the breakpoints matched before (to check them) and a new one
        # at the end; now and then another block.
        asked = {block for block in asked if block <= last} | {last}
        asked |= data.draw(st.sets(st.integers(0, last), max_size=1))
        assert counted(resuming, body, prompt, sorted(asked)) == counted(from_the_start, body, prompt, sorted(asked))


@pytest.mark.parametrize("template", list(COUNTERS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent_conversation(), st.lists(agent_turn(), min_size=1, max_size=4), VARIABLES)
def test_agent_turns_resume(
    template: str, messages: list[dict[str, Any]], turns: list[list[dict[str, Any]]], variables: Any
) -> None:
    resuming, from_the_start = COUNTERS[template]
    resumed = resumes(resuming)
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if variables is not None:
        body["chat_template_kwargs"] = variables
    asked: list[int] = []
    try:
        for turn in [[], *turns]:
            body = copy.deepcopy(body)
            body["messages"].extend(copy.deepcopy(turn))
            prompt = parsed(body)
            assume(prompt is not None)  # the parts' own markers may be too many
            assert prompt is not None
            asked = [*asked, len(prompt.blocks) - 1]  # the last breakpoint is checked, a new one counted
            assert resuming.count_blocking(body, prompt, asked) == from_the_start.count_blocking(body, prompt, asked)
    finally:
        del resuming._resumer.resume  # type: ignore[union-attr]
    assert all(resumed[1:])


def test_a_breakpoint_the_template_leaves_out_does_not_stop_resumption() -> None:
    """DeepSeek-V3.1 renders no tools: a client that marks its tools asks for that block every time."""
    resuming, from_the_start = COUNTERS["deepseek-v3.1"]
    resumed = resumes(resuming)
    tool = {"type": "function", "function": {"name": "read", "description": "Read."}, "cache_control": MARK}
    body: dict[str, Any] = {"model": "m", "tools": [tool], "messages": [{"role": "user", "content": "Fix it."}]}
    try:
        for turn in range(3):
            body = copy.deepcopy(body)
            call = {"id": "c", "type": "function", "function": {"name": "read", "arguments": f'{{"n": {turn}}}'}}
            body["messages"] += [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": f"line {turn}"},
            ]
            prompt = parse_prompt(body, POLICY)
            asked = [0, len(prompt.blocks) - 1]
            counts = resuming.count_blocking(body, prompt, asked)
            assert counts == from_the_start.count_blocking(body, prompt, asked)
            assert counts.dropped == {0}
    finally:
        del resuming._resumer.resume  # type: ignore[union-attr]
    assert resumed[1:] == [True, True]


@pytest.mark.parametrize("next_day", [False, True])
def test_a_new_day_is_counted_with_the_new_date(next_day: bool) -> None:
    """gpt-oss writes today's date in its header: a count resumed across midnight would keep yesterday's."""
    resuming, from_the_start = gpt_oss(1 << 20), gpt_oss(0)
    resumed = resumes(resuming)
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hello."}]}
    prompt = parse_prompt(body, POLICY)
    resuming.count_blocking(body, prompt, [0])
    body["messages"].append({"role": "assistant", "content": "Hi."})
    prompt = parse_prompt(body, POLICY)

    class NextDay(StoppedClock):
        @classmethod
        def now(cls, tz: Any = None) -> NextDay:
            return cls(2026, 11, 27, 0, 0, 1, tzinfo=tz)

    with pytest.MonkeyPatch.context() as patch:
        if next_day:
            patch.setattr(cachegate.tokens.template, "datetime", NextDay)
        expected = from_the_start.count_blocking(body, prompt, [1])
        assert resuming.count_blocking(body, prompt, [1]) == expected

    assert resumed == [False, not next_day]


# Whole special tokens and halves of them, so that one may straddle the end of the shared text.
SHARED = st.lists(
    st.sampled_from(["<|im_start|>", "<|im_end|>", "<|im_", "end|>", "user\n", "héllo ", "  ", "\n\n", "x"]),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(SHARED.map("".join), SHARED.map("".join), SHARED.map("".join), st.data())
def test_a_count_from_a_cut_far_enough_back_is_the_whole_count(
    shared: str, first_tail: str, second_tail: str, data: st.DataObject
) -> None:
    """The piece-level claim resumption rests on (``PieceCounter.count_from``)."""
    pieces = HfPieces(QWEN3_TOKENIZER, b"qwen3")
    counter = PieceCounter(pieces)
    first = counter.count_from(shared + first_tail, [])
    second = shared + second_tail
    whole = counter.count_from(second, range(len(second) + 1))
    for i, cut in enumerate(first.starts):
        if cut > len(shared) - pieces.cut_reach:
            break
        boundaries = data.draw(st.sets(st.integers(cut, len(second)), max_size=5))
        resumed = counter.count_from(second[cut:], boundaries, cut, first.before[i])

        assert resumed.total == whole.total
        assert resumed.at_offset == {boundary: whole.at_offset[boundary] for boundary in boundaries}


def test_a_cut_too_near_the_end_of_the_shared_text_may_not_be_a_cut() -> None:
    """Why the reach: a special token that ends past the shared text may not be there in the next one."""
    pieces = HfPieces(QWEN3_TOKENIZER, b"qwen3")
    counter = PieceCounter(pieces)
    shared = "<|im_start|>user\nhello <|im_"
    first = counter.count_from(shared + "end|>\n", [])
    cut = len(shared) - len("<|im_")
    assert cut in first.starts and cut > len(shared) - pieces.cut_reach

    second = shared + "ending"
    resumed = counter.count_from(second[cut:], [], cut, first.before[first.starts.index(cut)])

    assert resumed.total != counter.count_from(second, []).total


def test_checkpoints_are_bounded_in_bytes() -> None:
    store = CheckpointStore(max_bytes=3_000)
    made = {
        bytes([n]): Checkpoint(b"", None, 0, 0, "x" * 900, None, 0, {}, frozenset())  # type: ignore[arg-type]
        for n in range(4)
    }
    for prefix_hash, checkpoint in made.items():
        store.keep(prefix_hash, checkpoint)

    assert store.deepest([b"\x00"], b"") == []  # the oldest went
    assert store.deepest([b"\x00", b"\x03", b"\x02"], b"") == [(2, made[b"\x02"]), (1, made[b"\x03"])]
    assert store.deepest([b"\x03"], b'{"enable_thinking":false}') == []  # other variables
