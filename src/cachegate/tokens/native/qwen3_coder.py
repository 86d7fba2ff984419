"""Qwen3-Coder's chat template (Qwen/Qwen3-Coder-*): the header by the template itself, the
conversation in Python.

The header — the system message and the tools as XML — is rendered by jinja and remembered
(``header.py``). The conversation is ChatML with tool calls as XML parameters; the template
looks ahead at one thing only, whether a tool result is followed by another.

The template trims the text of an assistant turn with calls. The sentinel method then marks
that text at its end, unless its last text part ends in whitespace — then it marks every text
before its trailing whitespace, a placement a layout does not follow: such a request goes to
the sentinel method.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import jinja2

from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.chatml import followed_by_tool
from cachegate.tokens.native.header import JinjaHeader
from cachegate.tokens.native.plain import PlainMessage, TextWriter, call_layout
from cachegate.tokens.template import Unsupported, as_output, tojson


class Qwen3CoderTemplate(NativeTemplate):
    """The Qwen3-Coder template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    def __init__(self, template: jinja2.Template) -> None:
        self._header = JinjaHeader(template, frozenset({"system"}), "<|im_start|>user\n<|im_end|>\n", prose_only=False)

    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        variables: Mapping[str, Any],
    ) -> str:
        expect_plain_chat(messages)
        out = [self._header.render(messages[0], tools, variables)]
        conversation = messages[1:] if messages[0]["role"] == "system" else messages
        for position, message in enumerate(conversation):
            role, content = message["role"], message["content"]
            calls = message.get("tool_calls")
            if role == "assistant" and calls:
                if type(calls) is not list:
                    raise Unsupported("tool_calls must be a list")
                out.append("<|im_start|>assistant" + ("\n" + content.strip() + "\n" if content.strip() else ""))
                for call in calls:
                    function = call.get("function", call) if type(call) is dict else None
                    if type(function) is not dict:
                        raise Unsupported("a tool call must be an object")
                    out.append("\n" + _call_text(function))
                out.append("<|im_end|>\n")
            elif role == "tool":
                if position > 0 and conversation[position - 1]["role"] != "tool":
                    out.append("<|im_start|>user\n")
                out.append("<tool_response>\n" + content + "\n</tool_response>\n")
                if position == len(conversation) - 1 or conversation[position + 1]["role"] != "tool":
                    out.append("<|im_end|>\n")
            else:
                out.append("<|im_start|>" + role + "\n" + content + "<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        return "".join(out)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        request, raw, since, keep = layout.request, layout.raw, layout.since, layout.keep
        messages = request.messages
        dropped: set[int] = set()
        if since is not None:
            layout.expect_context((followed_by_tool(raw, since.message),))
            first_in_loop = 1 if raw[0]["role"] == "system" else 0
        else:
            if not messages:
                raise Unsupported("the template needs a message")
            header = self._header.layout(layout, messages[0])
            out.write_content(header.text, header.ends)
            dropped.update(header.dropped)
            first_in_loop = 1 if header.holds_first else 0
            messages = messages[first_in_loop:]
        for message in messages:
            role, index = message.role, message.index
            if role == "assistant" and message.calls:
                _lay_out_calls(out, message)
            elif role == "tool":
                if index > first_in_loop and raw[index - 1]["role"] != "tool":
                    out.write("<|im_start|>user\n")
                out.write("<tool_response>\n")
                out.write_content(message.content, message.text_ends)
                out.write("\n</tool_response>\n")
                if not followed_by_tool(raw, index):
                    out.write("<|im_end|>\n")
            else:
                out.write("<|im_start|>" + role + "\n")
                out.write_content(message.content, message.text_ends)
                out.write("<|im_end|>\n")
            if index == keep:
                out.keep_here(index, (followed_by_tool(raw, index),))
        out.write("<|im_start|>assistant\n")
        return dropped


def _lay_out_calls(out: TextWriter, message: PlainMessage) -> None:
    content = message.content
    out.write("<|im_start|>assistant")
    if content.strip():
        if message.text_ends and content[: message.text_ends[-1][1]][-1:].isspace():
            raise Unsupported("text the template trims whose last part ends in whitespace")
        lead = len(content) - len(content.lstrip())
        out.write("\n")
        out.note_ends(message.text_ends, lambda end: end - lead)
        out.write(content.strip() + "\n")
    for block, call in message.calls:
        out.write("\n")
        text, end = call_layout(call, _call_text)
        out.write_ending(text, block, end)
    out.write("<|im_end|>\n")


def _call_text(function: Mapping[str, Any]) -> str:
    """A call's function as the template writes it: its arguments as XML parameters."""
    name = function.get("name")
    arguments = function.get("arguments", {})
    if type(name) is not str or type(arguments) is not dict:
        raise Unsupported("a call needs a string name and arguments that are an object")
    parameters = "".join(
        "<parameter="
        + key
        + ">\n"
        + (tojson(value) if type(value) in (dict, list) else as_output(value))
        + "\n</parameter>\n"
        for key, value in arguments.items()
    )
    return "<tool_call>\n<function=" + name + ">\n" + parameters + "</function>\n</tool_call>"
