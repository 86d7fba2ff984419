"""The chat body's shape and size, checked before anything is forwarded (SPEC §11)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cachegate.core.chat_shape import DEFAULT_LIMITS, RequestLimits, ShapeError, check_chat_shape, check_depth

USER = {"role": "user", "content": "hi"}


def refused(body: dict[str, Any], limits: RequestLimits = DEFAULT_LIMITS) -> ShapeError:
    with pytest.raises(ShapeError) as caught:
        check_chat_shape(body, limits)
    return caught.value


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "messages", "missing_required_parameter"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": [USER, "hi"]}, "messages[1]", "invalid_type"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter"),
        ({"messages": [{"role": 1}]}, "messages[0].role", "invalid_type"),
        ({"messages": [USER, USER, {"role": "user", "content": 5}]}, "messages[2].content", "invalid_type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
            "invalid_type",
        ),
        ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]", "invalid_type"),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": "c"}}]}, "messages[0].tool_calls", "invalid_type"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
            "messages[0].tool_calls[0].function",
            "invalid_type",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": 3}]}, "messages[0].tool_call_id", "invalid_type"),
        ({"messages": [USER], "tools": {"type": "function"}}, "tools", "invalid_type"),
        ({"messages": [USER], "tools": [None]}, "tools[0]", "invalid_type"),
        (
            {"messages": [USER], "tools": [{"type": "function", "function": {"name": ["f"]}}]},
            "tools[0].function.name",
            "invalid_type",
        ),
        ({"messages": [USER], "stream": "true"}, "stream", "invalid_type"),
        ({"messages": [USER], "stream_options": True}, "stream_options", "invalid_type"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_as_openai_names_it(body: dict[str, Any], param: str, code: str) -> None:
    error = refused(body)
    assert (error.param, error.code) == (param, code)
    assert param in error.message


def test_the_message_says_what_was_expected_and_what_came() -> None:
    error = refused({"messages": [{"role": "user", "content": 5}]})
    assert error.message == (
        "Invalid type for 'messages[0].content': expected one of a string, an array of objects or null,"
        " but got an integer instead."
    )


def test_what_real_clients_send_passes() -> None:
    check_chat_shape(
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [{"image_url": {"url": "data:,"}}, {"type": "input_audio"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
                },
                {"role": "tool", "tool_call_id": "c", "content": "ok", "name": "f"},
                {"role": "custom", "content": "", "weird": [1, {"x": None}]},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "stream": False,
            "stream_options": None,
            "seed": 1,
        },
        DEFAULT_LIMITS,
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER] * 4}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 4}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "tool_calls": [{}] * 4}]}, "messages[0].tool_calls"),
        ({"messages": [USER], "tools": [{}] * 4}, "tools"),
    ],
)
def test_sizes_over_the_limits_are_refused(body: dict[str, Any], param: str) -> None:
    error = refused(body, RequestLimits(max_messages=3, max_parts=3, max_tools=3))
    assert (error.param, error.code) == (param, "array_above_max_length")
    check_chat_shape(body, RequestLimits(max_messages=4, max_parts=4, max_tools=4))


@pytest.mark.parametrize("depth", [1, 2, 5, 63, 64, 65, 300])
def test_depth_is_counted_in_arrays_and_objects(depth: int) -> None:
    value: Any = "[{[{ brackets in text }]}]"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value, "s": "]]]}}}"}
    body = json.loads(json.dumps({"model": "m", "v": value}))
    if depth <= 64:
        check_depth(body, 64)
        check_depth(body, depth)
    else:
        with pytest.raises(ShapeError) as caught:
            check_depth(body, 64)
        assert caught.value.code == "nesting_too_deep"
    if depth > 1:
        with pytest.raises(ShapeError):
            check_depth(body, depth - 1)
