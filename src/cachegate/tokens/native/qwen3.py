"""Qwen3's chat template (Qwen/Qwen3-*, tokenizer_config.json) in plain Python.

``render_qwen3`` renders a prepared conversation as the template does. ``Qwen3Template.lay_out``
writes the same text straight from the request in its common shapes and notes where each
block's text ends, with no marked rendering to search (``plain.py``). Both give way
(``Unsupported``) outside what they reproduce.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.chatml import (
    MISSING,
    TOOLS_HEAD,
    TOOLS_TAIL,
    arguments_as_they_are,
    followed_by_tool,
    lay_out_tool_result,
    render_tool_result,
    tool_call_text,
)
from cachegate.tokens.native.plain import PlainMessage, PlainRequest, TextWriter, call_layout, tool_layout
from cachegate.tokens.template import Unsupported, tojson


def render_qwen3(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
) -> str:
    """Qwen3's chat template (Qwen/Qwen3-*, tokenizer_config.json), with the generation prompt."""
    expect_plain_chat(messages)
    out: list[str] = []
    first = messages[0]
    if tools:
        out.append("<|im_start|>system\n")
        if first["role"] == "system":
            out.append(first["content"] + "\n\n")
        out.append(TOOLS_HEAD)
        for tool in tools:
            out.append("\n")
            out.append(tojson(tool))
        out.append(TOOLS_TAIL)
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
            render_tool_result(out, messages, index)
    out.append("<|im_start|>assistant\n")
    if variables.get("enable_thinking", MISSING) is False:
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
            if position > 0 or content:
                parts.append("\n")
            parts.append(_qwen3_call(call))
        text = "".join(parts)
    return text + "<|im_end|>\n"


def _qwen3_call(call: Any) -> str:
    """One tool call as the template writes it."""
    function = call.get("function") if type(call) is dict else None
    if type(function) is not dict or not function or "arguments" not in function:
        raise Unsupported("a tool call must hold a function object with its arguments")
    return tool_call_text(function, arguments_as_json=False)


class Qwen3Template(NativeTemplate):
    """The Qwen3 template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    __call__ = staticmethod(render_qwen3)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        request, raw, since, keep = layout.request, layout.raw, layout.since, layout.keep
        messages, first = request.messages, request.first
        if not raw:
            raise Unsupported("the template needs a message")
        last = len(raw) - 1
        last_query = last
        for index in range(last, -1, -1):
            if raw[index]["role"] == "user":
                if index >= first and messages[index - first].content.startswith("<tool_response>"):
                    # A mark at its end would hide what the template looks for: the sentinel method decides.
                    raise Unsupported("a user message that may be a tool response")
                last_query = index
                break
        if since is not None:
            layout.expect_context(_looked_ahead(raw, since.message, last_query))
        else:
            _lay_out_system(out, request, messages[0])
        for message in messages:
            role, index = message.role, message.index
            if role == "user" or (role == "system" and index != 0):
                out.write("<|im_start|>" + role + "\n")
                out.write_content(message.content, message.text_ends)
                out.write("<|im_end|>\n")
            elif role == "assistant":
                _lay_out_assistant(out, message, index > last_query, index == last)
            elif role == "tool":
                lay_out_tool_result(out, raw, message)
            elif role != "system":
                raise Unsupported("a role the template leaves out")
            if index == keep:
                out.keep_here(index, _looked_ahead(raw, index, last_query))
        out.write("<|im_start|>assistant\n")
        if layout.variables.get("enable_thinking", MISSING) is False:
            out.write("<think>\n\n</think>\n\n")
        return ()


def _lay_out_system(out: TextWriter, request: PlainRequest, first: PlainMessage) -> None:
    """The system turn: the system message, the tools, both or neither."""
    if request.tools:
        out.write("<|im_start|>system\n")
        if first.role == "system":
            out.write_content(first.content, first.text_ends)
            out.write("\n\n")
        out.write(TOOLS_HEAD)
        for block, tool in request.tools:
            out.write("\n")
            text, end = tool_layout(tool)
            out.write_ending(text, block, end)
        out.write(TOOLS_TAIL)
    elif first.role == "system":
        out.write("<|im_start|>system\n")
        out.write_content(first.content, first.text_ends)
        out.write("<|im_end|>\n")


def _looked_ahead(raw: list[Any], message: int, last_query: int) -> tuple[Any, ...]:
    """What the rendering up to the end of ``message`` takes from the messages after it.

    The last user query (assistants after it are written with their reasoning), whether the
    message is the last (an assistant then always is) and whether a tool result is followed
    by another (they share one turn). Stricter than the template needs in places: a
    difference only costs a layout from the start.
    """
    return (
        last_query if last_query <= message else -1,
        message == len(raw) - 1 if raw[message]["role"] == "assistant" else None,
        followed_by_tool(raw, message),
    )


def _lay_out_assistant(out: TextWriter, message: PlainMessage, after_query: bool, is_last: bool) -> None:
    content = message.content
    reasoning = message.source.get("reasoning")
    if "</think>" in content or not (reasoning is None or type(reasoning) is str):
        raise Unsupported("reasoning the template splits out of the content")
    if after_query and (is_last or reasoning):
        out.write("<|im_start|>assistant\n<think>\n" + (reasoning or "").strip("\n") + "\n</think>\n\n")
        out.write_content(content, message.text_ends, len(content) - len(content.lstrip("\n")))
    else:
        out.write("<|im_start|>assistant\n")
        out.write_content(content, message.text_ends)
    for position, (block, call) in enumerate(message.calls):
        if position > 0 or content:
            out.write("\n")
        text, end = call_layout(call, arguments_as_they_are)
        out.write_ending(text, block, end)
    out.write("<|im_end|>\n")
