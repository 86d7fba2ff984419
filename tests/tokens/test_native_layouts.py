"""Native layouts give the sentinel method's rendering and block ends, or step aside.

A native layout writes the rendering and notes where each block's text ends in one pass; the
sentinel method renders with marks at the ends of the blocks' texts and finds them. For any
request, the layout must give the text, the boundaries at every block, the dropped blocks and
the images the sentinel method gives over the template's own jinja rendering — or raise
``Unsupported``. Agent conversations, the traffic it exists for, must never be left out.

Holding two methods to each other cannot catch a rule both follow wrongly: both once ended a
tool at its last string, short of its closing brace. So where a block ends is also checked
against the rendering itself: a tool ends with its JSON as the template writes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_strategies import TOOL, TOOLS, VARIABLES, agent_conversation, chat_message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stopped_clock import stopped_clock

import cachegate.tokens.template
from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt
from cachegate.tokens.conversation import describe_blocks
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.native import LaidOutPrompt, NativeTemplate, native_template
from cachegate.tokens.registry import hf_counter, tiktoken_counter
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tally import prefix_boundaries
from cachegate.tokens.template import Unsupported
from cachegate.tokens.tiktoken_pieces import named_encoding

POLICY = TtlPolicy.default_policy()
TEMPLATES = Path(__file__).resolve().parents[1] / "tokens_parity" / "templates"
QWEN3 = qwen3_files().chat_template
QWEN25 = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
DEEPSEEK = (TEMPLATES / "deepseek-ai-DeepSeek-V3.1.jinja").read_text(encoding="utf-8")
QWEN3_CODER = (TEMPLATES / "Qwen3-Coder.jinja").read_text(encoding="utf-8")
GPT_OSS = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
MISTRAL_NEMO = (TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
JINJA_ONLY = "{#- the same template, without its native layout #}"


@pytest.fixture(scope="module", autouse=True)
def stopped() -> Iterator[None]:
    with stopped_clock(cachegate.tokens.template):  # gpt-oss writes today's date
        yield


def _jinja(template: str, special_tokens: dict[str, Any] | None = None) -> ChatTokenCounter:
    files = qwen3_files()
    return hf_counter(files.tokenizer_json, template + JINJA_ONLY, special_tokens or files.special_tokens)


QWEN3_NATIVE = native_template(QWEN3)
QWEN3_JINJA = _jinja(QWEN3)
QWEN25_NATIVE = native_template(QWEN25)
QWEN25_JINJA = _jinja(QWEN25)
LLAMA31_NATIVE = native_template(LLAMA31)
LLAMA31_JINJA = _jinja(LLAMA31, {"bos_token": "<|begin_of_text|>"})
DEEPSEEK_NATIVE = native_template(DEEPSEEK)
DEEPSEEK_JINJA = _jinja(DEEPSEEK, {"bos_token": "<｜begin▁of▁sentence｜>"})
QWEN3_CODER_NATIVE = native_template(QWEN3_CODER)
QWEN3_CODER_JINJA = _jinja(QWEN3_CODER)
GPT_OSS_NATIVE = native_template(GPT_OSS)
GPT_OSS_JINJA = tiktoken_counter(named_encoding("o200k_harmony"), GPT_OSS + JINJA_ONLY)


def laid_out(
    native: NativeTemplate | None, sentinel: ChatTokenCounter, body: dict[str, Any], prompt: ParsedPrompt
) -> LaidOutPrompt | None:
    assert native is not None
    variables = sentinel._template.variables(body.get("chat_template_kwargs"))  # the sentinel method's own
    try:
        return native.lay_out(body, prompt.blocks, "\n", variables)
    except Unsupported:
        return None


def assert_same_as_the_sentinel_method(layout: LaidOutPrompt, sentinel: ChatTokenCounter, body: dict[str, Any]) -> None:
    prompt = parse_prompt(body, POLICY)
    kept = {block for block in range(len(prompt.blocks)) if block not in layout.dropped}
    expected = sentinel.render(body, prompt, sorted(kept))
    assert layout.text == expected.text
    assert prefix_boundaries(layout.ends, kept) == expected.boundaries
    # Both leave out the same blocks: the text of neither is in the rendering.
    assert sentinel.count_blocking(body, prompt, sorted(layout.dropped)).dropped == layout.dropped
    traits = describe_blocks(body, prompt.blocks)
    assert layout.images == [block for block, trait in enumerate(traits) if trait.is_image]


def body_of(messages: list[dict[str, Any]], tools: Any, variables: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if tools is not None:
        body["tools"] = tools
    if variables is not None:
        body["chat_template_kwargs"] = variables
    return body


def prompt_or_skip(body: dict[str, Any]) -> ParsedPrompt:
    try:
        return parse_prompt(body, POLICY)
    except MarkerError:
        assume(False)
        raise


@pytest.mark.parametrize(
    ("native", "sentinel"),
    [
        (QWEN3_NATIVE, QWEN3_JINJA),
        (QWEN25_NATIVE, QWEN25_JINJA),
        (LLAMA31_NATIVE, LLAMA31_JINJA),
        (DEEPSEEK_NATIVE, DEEPSEEK_JINJA),
        (QWEN3_CODER_NATIVE, QWEN3_CODER_JINJA),
        (GPT_OSS_NATIVE, GPT_OSS_JINJA),
    ],
    ids=["qwen3", "qwen2.5", "llama3.1", "deepseek-v3.1", "qwen3-coder", "gpt-oss"],
)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chat_message(), max_size=6), TOOLS, VARIABLES)
def test_a_layout_is_the_sentinel_methods_or_none(
    native: NativeTemplate, sentinel: ChatTokenCounter, messages: list[dict[str, Any]], tools: Any, variables: Any
) -> None:
    body = body_of(messages, tools, variables)
    layout = laid_out(native, sentinel, body, prompt_or_skip(body))
    if layout is not None:
        assert_same_as_the_sentinel_method(layout, sentinel, body)


@pytest.mark.parametrize(
    ("native", "sentinel"),
    [
        (QWEN3_NATIVE, QWEN3_JINJA),
        (QWEN25_NATIVE, QWEN25_JINJA),
        (LLAMA31_NATIVE, LLAMA31_JINJA),
        (DEEPSEEK_NATIVE, DEEPSEEK_JINJA),
        (QWEN3_CODER_NATIVE, QWEN3_CODER_JINJA),
        (GPT_OSS_NATIVE, GPT_OSS_JINJA),
    ],
    ids=["qwen3", "qwen2.5", "llama3.1", "deepseek-v3.1", "qwen3-coder", "gpt-oss"],
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent_conversation(), st.one_of(st.none(), st.lists(TOOL, min_size=1, max_size=2)), VARIABLES)
def test_agent_conversations_are_laid_out(
    native: NativeTemplate, sentinel: ChatTokenCounter, messages: list[dict[str, Any]], tools: Any, variables: Any
) -> None:
    body = body_of(messages, tools, variables)
    layout = laid_out(native, sentinel, body, prompt_or_skip(body))

    assert layout is not None
    assert_same_as_the_sentinel_method(layout, sentinel, body)


def test_a_counter_counts_through_the_layout_and_the_sentinel_method_alike() -> None:
    files = qwen3_files()
    native = hf_counter(files.tokenizer_json, QWEN3, files.special_tokens)
    body = body_of(
        [
            {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "Read it."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "x = 1\n"}]},
        ],
        [{"type": "function", "function": {"name": "read", "description": "Read a file.", "parameters": {}}}],
        None,
    )
    prompt = parse_prompt(body, POLICY)
    blocks = list(range(len(prompt.blocks)))

    laid_out = native.count_blocking(body, prompt, blocks)
    marked = QWEN3_JINJA.count_blocking(body, prompt, blocks)

    assert laid_out == marked
    assert (laid_out.method, marked.method) == ("layout", "sentinel")


@pytest.mark.parametrize(
    ("text", "laid_out_natively"),
    [
        pytest.param("  Reading the file.", True, id="leading whitespace, trimmed"),
        pytest.param("Reading the file.\n", False, id="trailing whitespace: the sentinel method marks before it"),
    ],
)
def test_qwen3_coder_trims_the_text_of_a_turn_with_calls(text: str, laid_out_natively: bool) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "read", "arguments": '{"path": "a.py"}'}}
    body = body_of(
        [
            {"role": "user", "content": "Fix it."},
            {"role": "assistant", "content": [{"type": "text", "text": text}], "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "x = 1"},
        ],
        None,
        None,
    )
    layout = laid_out(QWEN3_CODER_NATIVE, QWEN3_CODER_JINJA, body, parse_prompt(body, POLICY))

    assert (layout is not None) == laid_out_natively
    if layout is not None:
        assert_same_as_the_sentinel_method(layout, QWEN3_CODER_JINJA, body)


def _compact_json(tool: Any) -> str:
    return json.dumps(tool, ensure_ascii=False)


def _indented_json(tool: Any) -> str:
    return json.dumps(tool, ensure_ascii=False, indent=4)


@pytest.mark.parametrize(
    ("native", "sentinel", "tool_json"),
    [
        (QWEN3_NATIVE, QWEN3_JINJA, _compact_json),
        (QWEN25_NATIVE, QWEN25_JINJA, _compact_json),
        (LLAMA31_NATIVE, LLAMA31_JINJA, _indented_json),
    ],
    ids=["qwen3", "qwen2.5", "llama3.1"],
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOOL, min_size=1, max_size=3))
def test_a_tool_ends_at_the_closing_brace_of_its_json(
    native: NativeTemplate, sentinel: ChatTokenCounter, tool_json: Callable[[Any], str], tools: list[Any]
) -> None:
    body = body_of([{"role": "user", "content": "Go."}], tools, None)
    prompt = parse_prompt(body, POLICY)
    tool_blocks = range(len(tools))

    marked = sentinel.render(body, prompt, tool_blocks)
    layout = laid_out(native, sentinel, body, prompt)

    assert layout is not None
    laid_out_ends = dict(layout.ends)
    for block, tool in enumerate(tools):
        assert marked.text[: marked.boundaries[block]].endswith(tool_json(tool))
        assert laid_out_ends[block] == marked.boundaries[block]


def test_mistral_nemo_ends_a_tool_at_the_closing_brace_it_writes() -> None:
    counter = _jinja(MISTRAL_NEMO, {"bos_token": "<s>", "eos_token": "</s>"})
    tool = {"type": "function", "function": {"name": "read", "description": "Read a file.", "parameters": {}}}
    body = body_of([{"role": "user", "content": "Go."}], [tool], None)

    rendering = counter.render(body, parse_prompt(body, POLICY), [0])

    assert rendering.text[: rendering.boundaries[0]].endswith(_compact_json(tool))
