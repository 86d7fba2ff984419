"""Llama 3.1's chat template (meta-llama/Llama-3.1-*-Instruct) in plain Python.

``render_llama3`` renders a prepared conversation as the template does; ``Llama3Template.lay_out``
writes the same text straight from the request in its common shapes and notes where each
block's text ends (``plain.py``). Without the ``builtin_tools`` and ``custom_tools`` variables,
which both give way to jinja.

The template trims message text, so the sentinel method marks a text before its trailing
whitespace (``conversation.py``): a layout puts a block's end there too. It looks ahead at
nothing once past its header (the system message, and with tools the first message after it),
so a layout resumes anywhere after that.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.plain import PlainMessage, PlainRequest, TextWriter, call_layout, tool_layout
from cachegate.tokens.template import Unsupported, as_output, tojson

_DEFAULT_DATE = "26 Jul 2024"
_FORMAT = (
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
_SYSTEM_TOOLS = (
    "You have access to the following functions. To call a function, please respond with JSON for a function call."
    + _FORMAT
)
_USER_TOOLS = (
    "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a "
    "function call with its proper arguments that best answers the given prompt.\n\n" + _FORMAT
)
_TURN_END = "<|eot_id|>"


def _settings(variables: Mapping[str, Any]) -> tuple[str, bool, str]:
    """The BOS token, whether tools go in the first user message, and the date, as the template reads them."""
    if "builtin_tools" in variables or "custom_tools" in variables:
        raise Unsupported("builtin or custom tools")
    in_user_message = variables.get("tools_in_user_message", True)
    date = variables.get("date_string", _DEFAULT_DATE)
    if type(in_user_message) not in (bool, int, str, type(None)) or type(date) is not str:
        raise Unsupported("variables of other types")
    bos = variables.get("bos_token")
    return ("" if bos is None and "bos_token" not in variables else as_output(bos)), bool(in_user_message), date


def _system_head(bos: str, tools: bool, tools_in_system: bool, date: str) -> str:
    return (
        bos
        + "<|start_header_id|>system<|end_header_id|>\n\n"
        + ("Environment: ipython\n" if tools else "")
        + "Cutting Knowledge Date: December 2023\nToday Date: "
        + date
        + "\n\n"
        + (_SYSTEM_TOOLS if tools_in_system else "")
    )


def render_llama3(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
) -> str:
    """Llama 3.1's chat template, with the generation prompt."""
    expect_plain_chat(messages)
    bos, in_user_message, date = _settings(variables)
    system = ""
    if messages[0]["role"] == "system":
        system = messages[0]["content"].strip()
        messages = messages[1:]
    out = [_system_head(bos, tools is not None, tools is not None and not in_user_message, date)]
    if tools is not None and not in_user_message:
        out.extend(tojson(tool, indent=4) + "\n\n" for tool in tools)
    out.append(system + _TURN_END)
    if tools is not None and in_user_message:
        if not messages:
            raise Unsupported("tools in the first user message, and no message: the template refuses it")
        out.append(_USER_TOOLS)
        out.extend(tojson(tool, indent=4) + "\n\n" for tool in tools)
        out.append(messages[0]["content"].strip() + _TURN_END)
        messages = messages[1:]
    for message in messages:
        role = message["role"]
        if not (role in ("ipython", "tool") or "tool_calls" in message):
            out.append("<|start_header_id|>" + role + "<|end_header_id|>\n\n" + message["content"].strip() + _TURN_END)
        elif "tool_calls" in message:
            calls = message["tool_calls"]
            if type(calls) is not list or len(calls) != 1 or type(calls[0]) is not dict:
                raise Unsupported("one tool call at once: the template refuses others")
            function = calls[0].get("function")
            if type(function) is not dict or type(function.get("name")) is not str or "arguments" not in function:
                raise Unsupported("a call needs a function with a string name and arguments")
            out.append("<|start_header_id|>assistant<|end_header_id|>\n\n" + _call_text(function) + _TURN_END)
        else:
            out.append("<|start_header_id|>ipython<|end_header_id|>\n\n" + tojson(message["content"]) + _TURN_END)
    out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def _call_text(function: Mapping[str, Any]) -> str:
    return '{"name": "' + function["name"] + '", "parameters": ' + tojson(function["arguments"]) + "}"


class Llama3Template(NativeTemplate):
    """The Llama 3.1 template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    __call__ = staticmethod(render_llama3)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        request, keep = layout.request, layout.keep
        dropped: set[int] = set()
        # Past the header, the template looks ahead at nothing: a resumption carries no context.
        conversation = request.messages if layout.since is not None else _lay_out_header(out, request, layout.variables)
        for message in conversation:
            role = message.role
            if not (role in ("ipython", "tool") or message.calls):
                out.write("<|start_header_id|>" + role + "<|end_header_id|>\n\n")
                _write_trimmed(out, message)
                out.write(_TURN_END)
            elif message.calls:
                if len(message.calls) != 1:
                    raise Unsupported("one tool call at once: the template refuses others")
                dropped.update(block for block, _ in message.text_ends)  # a call's turn has no text
                block, call = message.calls[0]
                text, end = call_layout(call, _call_text, before_trailing_space=True)
                out.write("<|start_header_id|>assistant<|end_header_id|>\n\n")
                out.write_ending(text, block, end)
                out.write(_TURN_END)
            else:
                out.write("<|start_header_id|>ipython<|end_header_id|>\n\n")
                content = message.content
                # tojson escapes character by character: a text that ends at e in the content ends
                # where the JSON of content[:e] ends, before its closing quote.
                out.note_ends(message.text_ends, lambda end, content=content: len(tojson(content[:end].rstrip())) - 1)
                out.write(tojson(content) + _TURN_END)
            if message.index == keep:
                out.keep_here(keep, ())
        out.write("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return dropped


def _lay_out_header(out: TextWriter, request: PlainRequest, variables: Mapping[str, Any]) -> list[PlainMessage]:
    """The system turn, and with tools the first message after it; the messages left to write."""
    bos, in_user_message, date = _settings(variables)
    messages = request.messages
    if not messages:
        raise Unsupported("the template needs a message")
    tools = request.tools
    system = messages[0] if messages[0].role == "system" else None
    if system is not None:
        messages = messages[1:]
    out.write(_system_head(bos, tools is not None, tools is not None and not in_user_message, date))
    if tools is not None and not in_user_message:
        _write_tools(out, tools)
    if system is not None:
        _write_trimmed(out, system)
    out.write(_TURN_END)
    if tools is not None and in_user_message:
        if not messages or messages[0].calls:
            raise Unsupported("tools go in the first user message: it must be there, without calls")
        out.write(_USER_TOOLS)
        _write_tools(out, tools)
        _write_trimmed(out, messages[0])
        out.write(_TURN_END)
        messages = messages[1:]
    return messages


def _write_tools(out: TextWriter, tools: list[tuple[int, Any]]) -> None:
    for block, tool in tools:
        text, end = tool_layout(tool, _indented, before_trailing_space=True)
        out.write_ending(text, block, end)
        out.write("\n\n")


def _write_trimmed(out: TextWriter, message: PlainMessage) -> None:
    """The message's text trimmed; each text block ends before its own trailing whitespace."""
    content = message.content
    lead = len(content) - len(content.lstrip())
    out.note_ends(message.text_ends, lambda end: len(content[:end].rstrip()) - lead)
    out.write(content.strip())


def _indented(tool: Any) -> str:
    return tojson(tool, indent=4)
