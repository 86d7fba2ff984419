"""Qwen2.5's chat template (Qwen/Qwen2.5-*-Instruct, tokenizer_config.json) in plain Python.

``render_qwen25`` renders a prepared conversation as the template does; ``Qwen25Template.lay_out``
writes the same text straight from the request in its common shapes and notes where each
block's text ends (``plain.py``). The template looks ahead at one thing only — whether a tool
result is followed by another —, so a layout resumes wherever an earlier one left off.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.chatml import (
    TOOLS_HEAD,
    TOOLS_TAIL,
    arguments_as_json,
    followed_by_tool,
    lay_out_tool_result,
    render_tool_result,
    tool_call_text,
)
from cachegate.tokens.native.plain import PlainRequest, TextWriter, call_layout, tool_layout
from cachegate.tokens.template import Unsupported, tojson

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def render_qwen25(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
) -> str:
    """Qwen2.5's chat template, with the generation prompt."""
    expect_plain_chat(messages)
    first = messages[0]
    system = first["content"] if first["role"] == "system" else DEFAULT_SYSTEM
    out: list[str] = ["<|im_start|>system\n" + system]
    if tools:
        out.append("\n\n" + TOOLS_HEAD)
        for tool in tools:
            out.append("\n")
            out.append(tojson(tool))
        out.append(TOOLS_TAIL)
    else:
        out.append("<|im_end|>\n")
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        calls = message.get("tool_calls")
        if role == "user" or (role == "system" and index != 0) or (role == "assistant" and not calls):
            out.append("<|im_start|>" + role + "\n" + content + "<|im_end|>\n")
        elif role == "assistant":
            if type(calls) is not list:
                raise Unsupported("tool_calls must be a list")
            out.append("<|im_start|>assistant" + ("\n" + content if content else ""))
            for call in calls:
                out.append("\n" + _qwen25_call(call))
            out.append("<|im_end|>\n")
        elif role == "tool":
            render_tool_result(out, messages, index)
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def _qwen25_call(call: Any) -> str:
    """One tool call as the template writes it: its function's, when it has one."""
    if type(call) is not dict:
        raise Unsupported("a tool call must be an object")
    function = call.get("function", call)
    if type(function) is not dict or "arguments" not in function:
        raise Unsupported("a tool call must hold its arguments")
    return tool_call_text(function, arguments_as_json=True)


class Qwen25Template(NativeTemplate):
    """The Qwen2.5 template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    __call__ = staticmethod(render_qwen25)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        request, raw, since, keep = layout.request, layout.raw, layout.since, layout.keep
        if not raw:
            raise Unsupported("the template needs a message")
        if since is not None:
            layout.expect_context((followed_by_tool(raw, since.message),))
        else:
            _lay_out_system(out, request)
        for message in request.messages:
            role, index = message.role, message.index
            if role == "user" or (role == "system" and index != 0) or (role == "assistant" and not message.calls):
                out.write("<|im_start|>" + role + "\n")
                out.write_content(message.content, message.text_ends)
                out.write("<|im_end|>\n")
            elif role == "assistant":
                out.write("<|im_start|>assistant")
                if message.content:
                    out.write("\n")
                    out.write_content(message.content, message.text_ends)
                for block, call in message.calls:
                    out.write("\n")
                    text, end = call_layout(call, arguments_as_json)
                    out.write_ending(text, block, end)
                out.write("<|im_end|>\n")
            elif role == "tool":
                lay_out_tool_result(out, raw, message)
            elif role != "system":
                raise Unsupported("a role the template leaves out")
            if index == keep:
                out.keep_here(index, (followed_by_tool(raw, index),))
        out.write("<|im_start|>assistant\n")
        return ()


def _lay_out_system(out: TextWriter, request: PlainRequest) -> None:
    """The system turn: the system message or the default one, and the tools."""
    first = request.messages[0]
    out.write("<|im_start|>system\n")
    if first.role == "system":
        out.write_content(first.content, first.text_ends)
    else:
        out.write(DEFAULT_SYSTEM)
    if request.tools:
        out.write("\n\n" + TOOLS_HEAD)
        for block, tool in request.tools:
            out.write("\n")
            text, end = tool_layout(tool)
            out.write_ending(text, block, end)
        out.write(TOOLS_TAIL)
    else:
        out.write("<|im_end|>\n")
