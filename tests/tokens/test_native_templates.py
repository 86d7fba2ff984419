"""Native renderers give exactly their template's jinja rendering, or step aside.

The inputs are conversations as ``prepare_chat`` hands them to a template — and wider: any
role, content with the strings the template looks for, reasoning of any kind, tool calls with
or without names, arguments as objects or strings, boundary marks anywhere. For each, the
native renderer gives the jinja text, or raises ``Unsupported`` (jinja then renders) — and
where jinja fails, it never gives a text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.tokens.native import native_renderer, render_qwen3
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
    assert native_renderer(QWEN3) is render_qwen3
    assert native_renderer(QWEN3 + " ") is None
    assert native_renderer((TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")) is render_qwen3


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
