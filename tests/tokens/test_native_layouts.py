"""Native layouts give the sentinel method's rendering and block ends, or step aside.

A native layout writes the rendering and notes where each block's text ends in one pass; the
sentinel method renders with marks at the ends of the blocks' texts and finds them. For any
request, the layout must give the text, the boundaries at every block, the dropped blocks and
the images the sentinel method gives over the template's own jinja rendering — or raise
``Unsupported``. Agent conversations, the traffic it exists for, must never be left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stopped_clock import stopped_clock

import cachegate.tokens.template
from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt
from cachegate.tokens import counter as counter_module
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import describe_blocks
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.hf import hf_counter
from cachegate.tokens.native import LaidOutPrompt, NativeTemplate, native_template
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.template import Unsupported
from cachegate.tokens.tiktoken_pieces import named_encoding, tiktoken_counter

POLICY = TtlPolicy.default_policy()
TEMPLATES = Path(__file__).resolve().parents[1] / "tokens_parity" / "templates"
QWEN3 = qwen3_files().chat_template
GPT_OSS = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
JINJA_ONLY = "{#- the same template, without its native layout #}"

_LOOKED_FOR = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<tool_response>",
        "</tool_response>",
        "\n",
        " ",
        "¤0¦",
        '"',
        "\\",
        "<|im_end|>",
        "<|channel|>final<|message|>",
    ]
)
_TEXT = st.lists(st.one_of(st.text(max_size=6), _LOOKED_FOR), max_size=5).map("".join)
_MARKER = st.one_of(st.just({}), st.just({"cache_control": {"type": "ephemeral"}}))
_PART = st.one_of(
    st.builds(lambda text, marker: {"type": "text", "text": text, **marker}, _TEXT, _MARKER),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}),
    st.just({"image_url": {"url": "data:image/png;base64,AA=="}}),  # an image part without a type
    st.just({"type": "input_audio", "input_audio": {"data": ""}}),
)
_CONTENT = st.one_of(_TEXT, st.none(), st.lists(_PART, max_size=3))
_ARGUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(["path", "city", "n"]), st.one_of(_TEXT, st.integers()), max_size=2).map(
        json.dumps
    ),
    st.just("{not json"),
)


@st.composite
def _call(draw: st.DrawFn) -> dict[str, Any]:
    function: dict[str, Any] = {"name": draw(st.sampled_from(["read", "run"])), "arguments": draw(_ARGUMENTS)}
    if draw(st.integers(0, 5)) == 0:
        function["content_type"] = "json"
    return {"id": "c", "type": "function", "function": function}


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(["system", "user", "assistant", "tool", "developer"]))}
    if draw(st.integers(0, 5)) > 0:
        message["content"] = draw(_CONTENT)
    if message["role"] == "assistant":
        if draw(st.booleans()):
            message["reasoning"] = draw(_TEXT)
        if draw(st.booleans()):
            message["tool_calls"] = draw(st.lists(_call(), max_size=2))
    if message["role"] == "tool":
        message["tool_call_id"] = "c"
    return message


_TOOL = st.builds(
    lambda name, description, required: {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "A path."}},
                "required": required,
            },
        },
    },
    st.sampled_from(["read", "run"]),
    _TEXT,
    st.sampled_from([[], ["path"]]),
)
_TOOLS = st.one_of(st.none(), st.just([]), st.lists(_TOOL, min_size=1, max_size=2))
_VARIABLES = st.one_of(st.none(), st.fixed_dictionaries({"enable_thinking": st.booleans()}))


@st.composite
def _agent_conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed agent traffic: a system prompt, a query, then tool calls each followed by their results."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": draw(st.one_of(_TEXT, st.lists(_PART.filter(_is_text), min_size=1, max_size=2)))},
        {"role": "user", "content": draw(_TEXT.filter(lambda text: not text.startswith("<tool_response>")))},
    ]
    for _ in range(draw(st.integers(0, 4))):
        call = {"role": "assistant", "content": draw(st.sampled_from(["", "Reading."])), "tool_calls": [draw(_call())]}
        call["tool_calls"][0]["function"].pop("content_type", None)
        call["tool_calls"][0]["function"]["arguments"] = json.dumps({"path": draw(_TEXT)})
        messages.append(call)
        result = draw(st.one_of(_TEXT, st.lists(_PART.filter(_is_text), min_size=1, max_size=2)))
        messages.append({"role": "tool", "tool_call_id": "c", "content": result})
    return messages


def _is_text(part: dict[str, Any]) -> bool:
    return part.get("type") == "text" and "</think>" not in part["text"] and "<|channel|>" not in part["text"]


@pytest.fixture(scope="module", autouse=True)
def stopped() -> Iterator[None]:
    with stopped_clock(cachegate.tokens.template):  # gpt-oss writes today's date
        yield


def _qwen3_jinja() -> ChatTokenCounter:
    files = qwen3_files()
    return hf_counter(files.tokenizer_json, QWEN3 + JINJA_ONLY, files.special_tokens)


QWEN3_NATIVE = native_template(QWEN3)
QWEN3_JINJA = _qwen3_jinja()
GPT_OSS_NATIVE = native_template(GPT_OSS)
GPT_OSS_JINJA = tiktoken_counter(named_encoding("o200k_harmony"), GPT_OSS + JINJA_ONLY)


def laid_out(native: NativeTemplate | None, body: dict[str, Any], prompt: ParsedPrompt) -> LaidOutPrompt | None:
    assert native is not None
    variables = {**qwen3_files().special_tokens} if native is QWEN3_NATIVE else {}
    variables.update(body.get("chat_template_kwargs") or {})
    try:
        return native.lay_out(body, prompt.blocks, "\n", variables)
    except Unsupported:
        return None


def assert_same_as_the_sentinel_method(layout: LaidOutPrompt, sentinel: ChatTokenCounter, body: dict[str, Any]) -> None:
    prompt = parse_prompt(body, POLICY)
    kept = {block for block in range(len(prompt.blocks)) if block not in layout.dropped}
    expected = sentinel.render(body, prompt, sorted(kept))
    assert layout.text == expected.text
    assert counter_module._prefix_boundaries(layout.ends, kept) == expected.boundaries
    for block in layout.dropped:  # neither counts a block whose text the template leaves out
        with pytest.raises(TokenCountError):
            sentinel.render(body, prompt, [block])
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
    ("native", "sentinel"), [(QWEN3_NATIVE, QWEN3_JINJA), (GPT_OSS_NATIVE, GPT_OSS_JINJA)], ids=["qwen3", "gpt-oss"]
)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), max_size=6), _TOOLS, _VARIABLES)
def test_a_layout_is_the_sentinel_methods_or_none(
    native: NativeTemplate, sentinel: ChatTokenCounter, messages: list[dict[str, Any]], tools: Any, variables: Any
) -> None:
    body = body_of(messages, tools, variables)
    layout = laid_out(native, body, prompt_or_skip(body))
    if layout is not None:
        assert_same_as_the_sentinel_method(layout, sentinel, body)


@pytest.mark.parametrize(
    ("native", "sentinel"), [(QWEN3_NATIVE, QWEN3_JINJA), (GPT_OSS_NATIVE, GPT_OSS_JINJA)], ids=["qwen3", "gpt-oss"]
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_agent_conversation(), st.one_of(st.none(), st.lists(_TOOL, min_size=1, max_size=2)), _VARIABLES)
def test_agent_conversations_are_laid_out(
    native: NativeTemplate, sentinel: ChatTokenCounter, messages: list[dict[str, Any]], tools: Any, variables: Any
) -> None:
    body = body_of(messages, tools, variables)
    layout = laid_out(native, body, prompt_or_skip(body))

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

    assert native.count_blocking(body, prompt, blocks) == QWEN3_JINJA.count_blocking(body, prompt, blocks)
