"""Hypothesis strategies for chat requests: random ones, and the agent conversations layouts exist for.

Text is drawn with what templates look for (``<think>``, tool-response tags, special tokens,
quotes, a mark's characters) so that the cases a template treats specially come up.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

LOOKED_FOR = st.sampled_from(
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
TEXT = st.lists(st.one_of(st.text(max_size=6), LOOKED_FOR), max_size=5).map("".join)
MARKER = st.one_of(st.just({}), st.just({"cache_control": {"type": "ephemeral"}}))
PART = st.one_of(
    st.builds(lambda text, marker: {"type": "text", "text": text, **marker}, TEXT, MARKER),
    st.just({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}),
    st.just({"image_url": {"url": "data:image/png;base64,AA=="}}),  # an image part without a type
    st.just({"type": "input_audio", "input_audio": {"data": ""}}),
)
CONTENT = st.one_of(TEXT, st.none(), st.lists(PART, max_size=3))
ARGUMENTS = st.one_of(
    st.dictionaries(st.sampled_from(["path", "city", "n"]), st.one_of(TEXT, st.integers()), max_size=2).map(json.dumps),
    st.just("{not json"),
)


@st.composite
def tool_call(draw: st.DrawFn) -> dict[str, Any]:
    function: dict[str, Any] = {"name": draw(st.sampled_from(["read", "run"])), "arguments": draw(ARGUMENTS)}
    if draw(st.integers(0, 5)) == 0:
        function["content_type"] = "json"
    return {"id": "c", "type": "function", "function": function}


@st.composite
def chat_message(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(["system", "user", "assistant", "tool", "developer"]))}
    if draw(st.integers(0, 5)) > 0:
        message["content"] = draw(CONTENT)
    if message["role"] == "assistant":
        if draw(st.booleans()):
            message["reasoning"] = draw(TEXT)
        if draw(st.booleans()):
            message["tool_calls"] = draw(st.lists(tool_call(), max_size=2))
    if message["role"] == "tool":
        message["tool_call_id"] = "c"
    return message


TOOL = st.builds(
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
    TEXT,
    st.sampled_from([[], ["path"]]),
)
TOOLS = st.one_of(st.none(), st.just([]), st.lists(TOOL, min_size=1, max_size=2))
VARIABLES = st.one_of(st.none(), st.fixed_dictionaries({"enable_thinking": st.booleans()}))


@st.composite
def agent_conversation(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed agent traffic: a system prompt, a query, then tool calls each followed by their results."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": draw(st.one_of(TEXT, st.lists(PART.filter(is_text), min_size=1, max_size=2)))},
        {"role": "user", "content": draw(TEXT.filter(lambda text: not text.startswith("<tool_response>")))},
    ]
    for _ in range(draw(st.integers(0, 4))):
        messages.extend(draw(agent_turn()))
    return messages


@st.composite
def agent_turn(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An assistant's tool call and its result."""
    call = draw(tool_call())
    call["function"].pop("content_type", None)
    call["function"]["arguments"] = json.dumps({"path": draw(TEXT)})
    assistant: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
    if draw(st.booleans()):  # templates refuse text and reasoning together beside a call
        assistant["content"] = draw(st.sampled_from(["", "Reading."]))
    else:
        assistant["reasoning"] = draw(st.sampled_from(["", "The parser is next."]))
    result = draw(st.one_of(TEXT, st.lists(PART.filter(is_text), min_size=1, max_size=2)))
    return [assistant, {"role": "tool", "tool_call_id": "c", "content": result}]


def is_text(part: dict[str, Any]) -> bool:
    return part.get("type") == "text" and "</think>" not in part["text"] and "<|channel|>" not in part["text"]
