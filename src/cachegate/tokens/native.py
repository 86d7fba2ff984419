"""Chat templates reproduced in plain Python, for the templates most requests go through.

A jinja template walks every message of the conversation on every count, twice (with and
without boundary marks); at a few hundred messages that is tens of milliseconds, and it is
the whole cost of counting a conversation whose prefix is already tokenized (``pieces.py``).
The same text built with string operations takes a fraction of a millisecond.

A native renderer stands in for one template, recognized by the SHA-256 of its source: any
other text — a template edited by one character — is rendered by jinja. It reproduces the
template for the conversations ``conversation.prepare_chat`` produces (string roles and
contents, tool calls with a function object) and raises ``Unsupported`` for anything else,
which jinja then renders. tests/tokens/test_native_templates.py holds every renderer to its
template's jinja rendering, marks included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from cachegate.tokens.template import NativeRenderer, Unsupported, tojson


def native_renderer(source: str) -> NativeRenderer | None:
    """The native renderer of the template ``source``, if there is one for exactly this text."""
    return _RENDERERS.get(hashlib.sha256(source.encode()).hexdigest())


_QWEN3_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN3_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
_MISSING = object()


def render_qwen3(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
) -> str:
    """Qwen3's chat template (Qwen/Qwen3-*, tokenizer_config.json), with the generation prompt."""
    if not messages or not all(
        type(message) is dict and type(message.get("role")) is str and type(message.get("content")) is str
        for message in messages
    ):
        raise Unsupported("messages must be dicts with string roles and contents")
    out: list[str] = []
    first = messages[0]
    if tools:
        out.append("<|im_start|>system\n")
        if first["role"] == "system":
            out.append(first["content"] + "\n\n")
        out.append(_QWEN3_TOOLS_HEAD)
        for tool in tools:
            out.append("\n")
            out.append(tojson(tool))
        out.append(_QWEN3_TOOLS_TAIL)
    elif first["role"] == "system":
        out.append("<|im_start|>system\n" + first["content"] + "<|im_end|>\n")

    # The last user message that is not a tool response: reasoning is rendered after it only.
    last_query = len(messages) - 1
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        content = message["content"]
        if message["role"] == "user" and not (
            content.startswith("<tool_response>") and content.endswith("</tool_response>")
        ):
            last_query = index
            break

    last = len(messages) - 1
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "user" or (role == "system" and index != 0):
            out.append("<|im_start|>" + role + "\n" + content + "<|im_end|>" + "\n")
        elif role == "assistant":
            out.append(_qwen3_assistant(message, index, index > last_query, index == last))
        elif role == "tool":
            if index == 0 or messages[index - 1]["role"] != "tool":
                out.append("<|im_start|>user")
            out.append("\n<tool_response>\n" + content + "\n</tool_response>")
            if index == last or messages[index + 1]["role"] != "tool":
                out.append("<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    if variables.get("enable_thinking", _MISSING) is False:
        out.append("<think>\n\n</think>\n\n")
    return "".join(out)


def _qwen3_assistant(message: Mapping[str, Any], index: int, after_query: bool, is_last: bool) -> str:
    role, content = message["role"], message["content"]
    reasoning = message.get("reasoning_content")
    if reasoning is None:
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
    elif type(reasoning) is not str:
        raise Unsupported("reasoning must be a string")
    if after_query and (is_last or reasoning):
        text = "<|im_start|>" + role + "\n<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    else:
        text = "<|im_start|>" + role + "\n" + content
    calls = message.get("tool_calls")
    if calls:
        if type(calls) is not list:
            raise Unsupported("tool_calls must be a list")
        parts = [text]
        for position, call in enumerate(calls):
            function = call.get("function") if type(call) is dict else None
            if type(function) is not dict or not function or "arguments" not in function:
                raise Unsupported("a tool call must hold a function object with its arguments")
            if position > 0 or content:
                parts.append("\n")
            name = function.get("name", _MISSING)
            arguments = function["arguments"]
            parts.append('<tool_call>\n{"name": "')
            parts.append("" if name is _MISSING else _as_output(name))
            parts.append('", "arguments": ')
            parts.append(arguments if type(arguments) is str else tojson(arguments))
            parts.append("}\n</tool_call>")
        text = "".join(parts)
    return text + "<|im_end|>\n"


def _as_output(value: Any) -> str:
    """What ``{{ value }}`` writes: ``str(value)`` (None as "None"), as jinja does without a finalize."""
    if type(value) not in (str, int, float, bool) and value is not None:
        raise Unsupported("only plain values are written as jinja writes them")
    return str(value)


_RENDERERS: dict[str, NativeRenderer] = {
    # Qwen3 (every size of the release), the template the shipped tokenizer_config.json holds.
    "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5": render_qwen3,
}
