"""DeepSeek-V3.1's chat template (deepseek-ai/DeepSeek-V3.1) in plain Python.

``render_deepseek`` renders a prepared conversation as the template does;
``DeepSeekTemplate.lay_out`` writes the same text straight from the request in its common
shapes and notes where each block's text ends (``plain.py``).

The template writes every system message first, wherever it stands in the conversation, so a
layout resumes only where no system message follows; the state it carries from message to
message (after a user turn, after a tool result) is what a resumption hands on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.plain import TextWriter, call_layout
from cachegate.tokens.template import Unsupported, as_output, tojson

_USER = "<｜User｜>"
_ASSISTANT = "<｜Assistant｜>"
_NO_THINKING = "<think></think>"
_END = "<｜end▁of▁sentence｜>"
_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
_CALL_BEGIN = "<｜tool▁call▁begin｜>"
_CALL_END = "<｜tool▁call▁end｜>"
_CALLS_END = "<｜tool▁calls▁end｜>"
_OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
_OUTPUT_END = "<｜tool▁output▁end｜>"


def _bos_and_thinking(variables: Mapping[str, Any]) -> tuple[str, bool]:
    """``{{ bos_token }}``, and the template's ``thinking`` (else ``enable_thinking``, else false)."""
    bos = "" if "bos_token" not in variables else as_output(variables["bos_token"])
    thinking = variables["thinking"] if "thinking" in variables else variables.get("enable_thinking", False)
    if type(thinking) not in (bool, int, str, type(None)):
        raise Unsupported("a thinking variable of another type")
    return bos, bool(thinking)


def render_deepseek(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
) -> str:
    """DeepSeek-V3.1's chat template, with the generation prompt (it takes no tools)."""
    expect_plain_chat(messages, empty=True)
    if any("prefix" in message for message in messages):
        raise Unsupported("a prefix message")
    bos, thinking = _bos_and_thinking(variables)
    out = [bos, "\n\n".join(message["content"] for message in messages if message["role"] == "system")]
    after_user = after_tool = False
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "user":
            after_user, after_tool = True, False
            out.append(_USER + content)
        elif role == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if type(calls) is not list:
                raise Unsupported("tool_calls must be a list")
            if after_user:
                out.append(_ASSISTANT + _NO_THINKING)
            after_user = after_tool = False
            for position, call in enumerate(calls):
                function = call.get("function") if type(call) is dict else None
                if type(function) is not dict or type(function.get("name")) is not str or "arguments" not in function:
                    raise Unsupported("a call needs a function with a string name and arguments")
                head = (content + _CALLS_BEGIN if content else _CALLS_BEGIN) if position == 0 else ""
                out.append(head + _CALL_BEGIN + _call_text(function) + _CALL_END)
            out.append(_CALLS_END + _END)
        elif role == "assistant":
            if after_user:
                out.append(_ASSISTANT + _NO_THINKING)
            after_user = False
            if after_tool:
                after_tool = False
            elif "</think>" in content:
                content = content.split("</think>", 1)[1]
            out.append(content + _END)
        elif role == "tool":
            after_user, after_tool = False, True
            out.append(_OUTPUT_BEGIN + content + _OUTPUT_END)
    if after_user and not after_tool:
        out.append(_ASSISTANT + ("<think>" if thinking else _NO_THINKING))
    return "".join(out)


def _call_text(function: Mapping[str, Any]) -> str:
    return function["name"] + "<｜tool▁sep｜>" + tojson(function["arguments"])


class DeepSeekTemplate(NativeTemplate):
    """The DeepSeek-V3.1 template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    __call__ = staticmethod(render_deepseek)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        request, since, keep = layout.request, layout.since, layout.keep
        messages = request.messages
        bos, thinking = _bos_and_thinking(layout.variables)
        dropped = {block for block, _ in request.tools or ()}  # the template takes no tools
        systems = [message for message in messages if message.role == "system"]
        last_system = systems[-1].index if systems else -1
        if since is not None:
            if systems:
                raise Unsupported("a system message after the resumption: the template writes it first")
            after_user, after_tool = since.state
        else:
            out.write(bos)
            for position, system in enumerate(systems):
                if position:
                    out.write("\n\n")
                out.write_content(system.content, system.text_ends)
            after_user = after_tool = False
        for message in messages:
            role, content = message.role, message.content
            if role == "user":
                after_user, after_tool = True, False
                out.write(_USER)
                out.write_content(content, message.text_ends)
            elif role == "assistant" and message.calls:
                if after_user:
                    out.write(_ASSISTANT + _NO_THINKING)
                after_user = after_tool = False
                for position, (block, call) in enumerate(message.calls):
                    if position == 0:
                        if content:
                            out.write_content(content, message.text_ends)
                        out.write(_CALLS_BEGIN)
                    text, end = call_layout(call, _call_text)
                    out.write(_CALL_BEGIN)
                    out.write_ending(text, block, end)
                    out.write(_CALL_END)
                out.write(_CALLS_END + _END)
            elif role == "assistant":
                if after_user:
                    out.write(_ASSISTANT + _NO_THINKING)
                after_user = False
                if after_tool:
                    after_tool = False
                elif "</think>" in content:
                    raise Unsupported("reasoning the template splits out of the content")
                out.write_content(content, message.text_ends)
                out.write(_END)
            elif role == "tool":
                after_user, after_tool = False, True
                out.write(_OUTPUT_BEGIN)
                out.write_content(content, message.text_ends)
                out.write(_OUTPUT_END)
            elif role != "system":
                raise Unsupported("a role the template leaves out")
            if message.index == keep and keep >= last_system:
                out.keep_here(keep, (), (after_user, after_tool))
        if after_user and not after_tool:
            out.write(_ASSISTANT + ("<think>" if thinking else _NO_THINKING))
        return dropped
