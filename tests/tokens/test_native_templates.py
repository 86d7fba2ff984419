"""Native renderers give exactly their template's jinja rendering, or step aside.

The inputs are conversations as ``prepare_chat`` hands them to a template — and wider: any
role, content with the strings the template looks for, reasoning of any kind, tool calls with
or without names, arguments as objects or strings, boundary marks anywhere. For each, the
native renderer gives the jinja text, or raises ``Unsupported`` (jinja then renders) — and
where jinja fails, it never gives a text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stopped_clock import stopped_clock

import cachegate.tokens.template
from cachegate.tokens.native import (
    DeepSeekTemplate,
    GptOssTemplate,
    Llama3Template,
    Qwen3Template,
    Qwen25Template,
    native_template,
    render_deepseek,
    render_llama3,
    render_qwen3,
    render_qwen25,
)
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.template import Unsupported, compile_template

TEMPLATES = Path(__file__).resolve().parents[1] / "tokens_parity" / "templates"

# Strings the Qwen3 template tests for or splits at, boundary marks, and text of any script.
_LOOKED_FOR = st.sampled_from(
    ["<think>", "</think>", "<tool_response>", "</tool_response>", "\n", "\n\n", " ", "¤0¦", "¤12¦", "<|im_end|>"]
)
_TEXT = st.lists(st.one_of(st.text(max_size=8), _LOOKED_FOR), max_size=6).map("".join)
_ROLE = st.sampled_from(["system", "user", "assistant", "tool", "developer"])
_NAME = st.one_of(st.text(max_size=6), st.none(), st.integers(-3, 3), st.just("get_weather"))
_ARGUMENTS = st.one_of(
    st.dictionaries(st.text(max_size=4), st.one_of(_TEXT, st.integers(), st.none()), max_size=3),
    _TEXT,
    st.lists(st.integers(), max_size=2),
)


@st.composite
def _function(draw: st.DrawFn) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": draw(_ARGUMENTS)}
    if draw(st.booleans()):
        function["name"] = draw(_NAME)
    return function


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(_ROLE), "content": draw(_TEXT)}
    if message["role"] == "assistant":
        if draw(st.booleans()):
            message["reasoning_content"] = draw(st.one_of(_TEXT, st.none()))
        if draw(st.booleans()):
            message["tool_calls"] = draw(
                st.lists(st.builds(lambda f: {"id": "c", "type": "function", "function": f}, _function()), max_size=2)
            )
    if message["role"] == "tool" and draw(st.booleans()):
        message["tool_call_id"] = "c"
    return message


_TOOL = st.builds(
    lambda name, text: {
        "type": "function",
        "function": {"name": name, "description": text, "parameters": {"type": "object", "properties": {}}},
    },
    st.text(max_size=6),
    _TEXT,
)
_TOOLS = st.one_of(st.none(), st.just([]), st.lists(_TOOL, min_size=1, max_size=2))
_VARIABLES = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"enable_thinking": st.one_of(st.booleans(), st.none(), st.just(0))}),
)


def jinja_rendering(source: str, messages: list[Any], tools: Any, variables: dict[str, Any]) -> str | None:
    """The template's own rendering, or None where it fails."""
    try:
        return compile_template(source).render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=True, **variables
        )
    except Exception:
        return None


def assert_native_matches(
    renderer: Any, source: str, messages: list[Any], tools: Any, variables: dict[str, Any]
) -> None:
    expected = jinja_rendering(source, messages, tools, variables)
    try:
        native = renderer(messages, tools, variables)
    except Unsupported:
        return  # jinja renders it
    assert native == expected


QWEN3 = qwen3_files().chat_template


def test_the_qwen3_template_has_its_native_renderer_and_an_edited_one_has_none() -> None:
    assert isinstance(native_template(QWEN3), Qwen3Template)
    assert native_template(QWEN3 + " ") is None
    assert isinstance(native_template((TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")), Qwen3Template)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), max_size=7), _TOOLS, _VARIABLES)
def test_qwen3_renders_as_its_template(messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]) -> None:
    assert_native_matches(render_qwen3, QWEN3, messages, tools, variables)


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([], id="no messages"),
        pytest.param([{"role": "user", "content": None}], id="content not a string"),
        pytest.param([{"role": "assistant", "content": "", "reasoning_content": 7}], id="reasoning not a string"),
        pytest.param([{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}], id="call without function"),
        pytest.param(
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": {"a": 1}, "arguments": {}}}]}],
            id="name an object",
        ),
    ],
)
def test_what_qwen3_does_not_reproduce_is_left_to_jinja(messages: list[Any]) -> None:
    with pytest.raises(Unsupported):
        render_qwen3(messages, None, {})


QWEN25 = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")


def test_the_qwen25_template_has_its_native_renderer() -> None:
    assert isinstance(native_template(QWEN25), Qwen25Template)
    assert native_template(QWEN25.replace("Alibaba Cloud", "Alibaba")) is None


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), max_size=7), _TOOLS, _VARIABLES)
def test_qwen25_renders_as_its_template(messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]) -> None:
    assert_native_matches(render_qwen25, QWEN25, messages, tools, variables)


def test_an_agent_turn_renders_as_its_template() -> None:
    messages = [
        {"role": "system", "content": "You fix bugs."},
        {"role": "user", "content": "Fix it."},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Read the file first.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": {"p": "a.py"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "x = 1"},
        {"role": "tool", "tool_call_id": "c2", "content": "y = 2"},
    ]
    tools = [{"type": "function", "function": {"name": "read", "description": "Read.", "parameters": {}}}]
    for variables in ({}, {"enable_thinking": False}):
        assert render_qwen3(messages, tools, variables) == jinja_rendering(QWEN3, messages, tools, variables)


# --- gpt-oss ------------------------------------------------------------------------------------

GPT_OSS = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(encoding="utf-8")
_CHANNEL = st.sampled_from(["<|channel|>analysis<|message|>", "<|channel|>final<|message|>", "<|end|>", "<|call|>"])
_GPT_OSS_TEXT = st.lists(st.one_of(st.text(max_size=8), _CHANNEL, _LOOKED_FOR), max_size=5).map("".join)


@pytest.fixture(scope="module", autouse=True)
def stopped() -> Iterator[None]:
    with stopped_clock(cachegate.tokens.template):  # the template writes today's date
        yield


@st.composite
def _gpt_oss_message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(_ROLE), "content": draw(_GPT_OSS_TEXT)}
    if message["role"] == "assistant":
        if draw(st.booleans()):
            message["thinking"] = draw(st.one_of(_GPT_OSS_TEXT, st.integers(0, 1)))
        if draw(st.integers(0, 2)) > 0:
            function: dict[str, Any] = {"name": draw(st.one_of(st.sampled_from(["get_weather", "run"]), st.none()))}
            if draw(st.integers(0, 4)) > 0:
                function["arguments"] = draw(_ARGUMENTS)
            if draw(st.integers(0, 4)) == 0:
                function["content_type"] = draw(st.sampled_from(["json", "code", 3]))
            message["tool_calls"] = [{"id": "c", "type": "function", "function": function}]
    return message


_SCHEMA = st.fixed_dictionaries(
    {"type": st.just("object")},
    optional={
        "properties": st.dictionaries(
            st.sampled_from(["city", "days", "units"]),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["string", "integer", "number", "boolean", "array", "object"])},
                optional={"description": _TEXT, "enum": st.lists(st.text(max_size=3), min_size=1, max_size=2)},
            ),
            max_size=3,
        ),
        "required": st.lists(st.sampled_from(["city", "days"]), max_size=2),
    },
)
_GPT_OSS_TOOL = st.builds(
    lambda name, text, schema: {
        "type": "function",
        "function": {"name": name, "description": text, "parameters": schema},
    },
    st.sampled_from(["get_weather", "run"]),
    _TEXT,
    _SCHEMA,
)
_GPT_OSS_VARIABLES = st.fixed_dictionaries(
    {},
    optional={
        "reasoning_effort": st.sampled_from(["low", "high"]),
        "model_identity": _TEXT,
        "builtin_tools": st.lists(st.sampled_from(["browser", "python"]), max_size=2),
    },
)


def test_the_gpt_oss_template_has_its_native_renderer() -> None:
    assert isinstance(native_template(GPT_OSS), GptOssTemplate)
    assert native_template(GPT_OSS.replace("ChatGPT", "GPT")) is None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_gpt_oss_message(), max_size=7),
    st.one_of(st.none(), st.just([]), st.lists(_GPT_OSS_TOOL, min_size=1, max_size=2)),
    _GPT_OSS_VARIABLES,
)
def test_gpt_oss_renders_as_its_template(messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]) -> None:
    renderer = native_template(GPT_OSS)
    assert renderer is not None
    assert_native_matches(renderer, GPT_OSS, messages, tools, variables)


@st.composite
def _gpt_oss_agent_loop(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed traffic: an optional system or developer message, then user turns, final
    answers, and tool calls each followed by their results."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_TEXT)})
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "final", "call"]))
        if kind == "user":
            messages.append({"role": "user", "content": draw(_TEXT)})
        elif kind == "final":
            messages.append({"role": "assistant", "content": draw(_TEXT)})
        else:
            call: dict[str, Any] = {"role": "assistant", "content": draw(st.one_of(st.just(""), _TEXT))}
            if not call["content"] and draw(st.booleans()):
                call["thinking"] = draw(_TEXT)
            function = {"name": draw(st.sampled_from(["get_weather", "run"])), "arguments": draw(_ARGUMENTS)}
            call["tool_calls"] = [{"id": "c", "type": "function", "function": function}]
            messages.append(call)
            for _ in range(draw(st.integers(1, 2))):
                messages.append({"role": "tool", "tool_call_id": "c", "content": draw(_TEXT)})
    return messages


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _gpt_oss_agent_loop(),
    st.one_of(st.none(), st.lists(_GPT_OSS_TOOL, min_size=1, max_size=2)),
    _GPT_OSS_VARIABLES,
)
def test_gpt_oss_renders_agent_loops_as_its_template(
    messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]
) -> None:
    renderer = native_template(GPT_OSS)
    assert renderer is not None
    # Well-formed traffic is never left to jinja.
    assert renderer(messages, tools, variables) == jinja_rendering(GPT_OSS, messages, tools, variables)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gpt_oss_agent_loop(), st.one_of(st.none(), st.lists(_TOOL, min_size=1, max_size=2)), _VARIABLES)
def test_qwen3_renders_agent_loops_as_its_template(
    messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]
) -> None:
    for message in messages:  # as prepare_chat offers an assistant's reasoning
        if "thinking" in message:
            message["reasoning_content"] = message["reasoning"] = message["thinking"]
    assert render_qwen3(messages, tools, variables) == jinja_rendering(QWEN3, messages, tools, variables)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gpt_oss_agent_loop(), st.one_of(st.none(), st.lists(_TOOL, min_size=1, max_size=2)))
def test_qwen25_renders_agent_loops_as_its_template(messages: list[dict[str, Any]], tools: Any) -> None:
    assert render_qwen25(messages, tools, {}) == jinja_rendering(QWEN25, messages, tools, {})


LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
_LLAMA_VARIABLES = st.fixed_dictionaries(
    {"bos_token": st.just("<|begin_of_text|>")},
    optional={
        "tools_in_user_message": st.one_of(st.booleans(), st.none()),
        "date_string": st.sampled_from(["26 Nov 2026", "1 Jan 2025"]),
    },
)


def test_the_llama31_template_has_its_native_renderer() -> None:
    assert isinstance(native_template(LLAMA31), Llama3Template)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(_message(), st.builds(lambda text: {"role": "ipython", "content": text}, _TEXT)), max_size=7),
    _TOOLS,
    _LLAMA_VARIABLES,
)
def test_llama31_renders_as_its_template(messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]) -> None:
    assert_native_matches(render_llama3, LLAMA31, messages, tools, variables)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gpt_oss_agent_loop(), st.one_of(st.none(), st.lists(_TOOL, min_size=1, max_size=2)), _LLAMA_VARIABLES)
def test_llama31_renders_agent_loops_as_its_template(
    messages: list[dict[str, Any]], tools: Any, variables: dict[str, Any]
) -> None:
    assert render_llama3(messages, tools, variables) == jinja_rendering(LLAMA31, messages, tools, variables)


DEEPSEEK = (TEMPLATES / "deepseek-ai-DeepSeek-V3.1.jinja").read_text(encoding="utf-8")
_DEEPSEEK_VARIABLES = st.fixed_dictionaries(
    {"bos_token": st.just("<｜begin▁of▁sentence｜>")},
    optional={"thinking": st.one_of(st.booleans(), st.none()), "enable_thinking": st.booleans()},
)


def test_the_deepseek_template_has_its_native_renderer() -> None:
    assert isinstance(native_template(DEEPSEEK), DeepSeekTemplate)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), max_size=7), _DEEPSEEK_VARIABLES)
def test_deepseek_renders_as_its_template(messages: list[dict[str, Any]], variables: dict[str, Any]) -> None:
    assert_native_matches(render_deepseek, DEEPSEEK, messages, None, variables)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gpt_oss_agent_loop(), _DEEPSEEK_VARIABLES)
def test_deepseek_renders_agent_loops_as_its_template(
    messages: list[dict[str, Any]], variables: dict[str, Any]
) -> None:
    for message in messages:  # the arguments as prepare_chat offers them: parsed
        for call in message.get("tool_calls", []):
            if isinstance(call["function"]["arguments"], str):
                call["function"]["arguments"] = {}
    assert render_deepseek(messages, None, variables) == jinja_rendering(DEEPSEEK, messages, None, variables)


QWEN3_CODER = (TEMPLATES / "Qwen3-Coder.jinja").read_text(encoding="utf-8")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), max_size=7), _TOOLS)
def test_qwen3_coder_renders_as_its_template(messages: list[dict[str, Any]], tools: Any) -> None:
    renderer = native_template(QWEN3_CODER)
    assert renderer is not None
    assert_native_matches(renderer, QWEN3_CODER, messages, tools, {})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_gpt_oss_agent_loop(), st.one_of(st.none(), st.lists(_TOOL, min_size=1, max_size=2)))
def test_qwen3_coder_renders_agent_loops_as_its_template(messages: list[dict[str, Any]], tools: Any) -> None:
    renderer = native_template(QWEN3_CODER)
    assert renderer is not None
    for message in messages:  # the arguments as prepare_chat offers them: parsed
        for call in message.get("tool_calls", []):
            if not isinstance(call["function"]["arguments"], dict):
                call["function"]["arguments"] = {}
    assert renderer(messages, tools, {}) == jinja_rendering(QWEN3_CODER, messages, tools, {})
