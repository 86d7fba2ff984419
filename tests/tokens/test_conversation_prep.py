"""The request as vLLM hands it to a chat template (string content format)."""

from __future__ import annotations

from typing import Any

import pytest

from cachegate.core.types import BlockKind, BlockRef
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import prepare_chat


def assistant_with_arguments(arguments: Any) -> dict[str, Any]:
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]}


@pytest.mark.parametrize(
    ("arguments", "parsed"),
    [
        ('{"a": [1, "x"]}', {"a": [1, "x"]}),
        ("not json", {}),
        ("", {}),
        (None, {}),
        ({"already": "parsed"}, {"already": "parsed"}),
        ("7", 7),
    ],
)
def test_tool_call_arguments_are_parsed_as_vllm_parses_them(arguments: Any, parsed: Any) -> None:
    chat = prepare_chat(assistant_with_arguments(arguments), "\n")

    assert chat.messages[0]["tool_calls"][0]["function"]["arguments"] == parsed


def test_the_request_is_not_changed() -> None:
    body = assistant_with_arguments('{"a": 1}')

    prepare_chat(body, "\n", {BlockRef(BlockKind.TOOL_CALL, 0, 0): "#"})

    assert body == assistant_with_arguments('{"a": 1}')


def test_messages_keep_only_the_fields_vllm_keeps() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "u", "name": "ann", "cache_control": {"type": "ephemeral"}, "audio": None},
            {"role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "ignored", "tool_calls": []},
            {
                "role": "tool",
                "content": [{"type": "text", "text": "t1"}, {"type": "text", "text": "t2"}],
                "tool_call_id": "1",
            },
        ]
    }

    chat = prepare_chat(body, "\n")

    assert chat.messages == [
        {"role": "user", "content": "u", "name": "ann"},
        {"role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "r", "thinking": "r"},
        {"role": "tool", "content": "t1\nt2", "tool_call_id": "1"},
    ]
    assert chat.tools is None


def test_text_parts_are_joined_and_other_parts_add_no_text() -> None:
    content = [
        "bare",
        {"type": "text", "text": "a"},
        {"type": "text", "text": None},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"image_url": "y"},
        {"type": "refusal", "refusal": "no"},
        {"type": "input_text", "text": "b"},
    ]

    chat = prepare_chat({"messages": [{"role": "user", "content": content}]}, " | ")

    assert chat.messages[0]["content"] == "bare | a | no | b"


def test_marks_end_the_text_of_their_blocks() -> None:
    tool = {"function": {"name": "f", "description": "d ", "parameters": {"required": ["x"]}, "strict": True}}
    call = {"id": "1", "function": {"arguments": "{}", "name": "f"}, "type": "function"}
    body = {
        "tools": [tool],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "p0"}, {"type": "text", "text": "p1 "}]},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ],
    }
    marks = {
        BlockRef(BlockKind.TOOL, None, 0): "#T",
        BlockRef(BlockKind.PART, 0, 1): "#P",
        BlockRef(BlockKind.TOOL_CALL, 1, 0): "#C",
    }

    at_end = prepare_chat(body, "\n", marks)
    before_space = prepare_chat(body, "\n", marks, before_trailing_space=True)

    assert at_end.tools == [
        {
            "type": "function",
            "function": {"name": "f", "description": "d ", "parameters": {"required": ["x#T"]}, "strict": True},
        }
    ]
    assert at_end.messages[0]["content"] == "p0\np1 #P"
    assert before_space.messages[0]["content"] == "p0\np1#P "
    # The arguments hold no string, so the call's name carries the mark.
    assert at_end.messages[1]["tool_calls"] == [
        {"id": "1", "function": {"arguments": {}, "name": "f#C"}, "type": "function"}
    ]


def test_a_request_without_messages_cannot_be_counted() -> None:
    with pytest.raises(TokenCountError, match="no messages"):
        prepare_chat({"prompt": "x"}, "\n")
