"""gpt-oss's chat template (openai/gpt-oss-20b and -120b): the header by the template itself,
the conversation in Python.

The header — system message, developer instructions, the tools as a TypeScript namespace —
depends on the tools, the first message and the variables only; jinja renders it from a
one-message conversation. The conversation is where jinja spends its time: for each
assistant tool call it looks through every later message for a final answer, which makes
the template quadratic in the number of messages; here that is one pass from the end.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import jinja2

import cachegate.tokens.template as template_module  # a module attribute: the tests stop its clock
from cachegate.tokens.native.base import Layout, NativeTemplate, expect_plain_chat
from cachegate.tokens.native.header import JinjaHeader
from cachegate.tokens.native.plain import PlainMessage, TextWriter, call_layout, plain_call
from cachegate.tokens.template import Unsupported, tojson


class GptOssTemplate(NativeTemplate):
    """The gpt-oss template: called, it renders a prepared conversation; ``lay_out`` lays out a request."""

    def __init__(self, template: jinja2.Template) -> None:
        self._header = JinjaHeader(
            template, frozenset({"developer", "system"}), "<|start|>user<|message|><|end|>", prose_only=True
        )

    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        variables: Mapping[str, Any],
    ) -> str:
        expect_plain_chat(messages)
        out = [self._header.render(messages[0], tools, variables)]
        conversation = messages[1:] if messages[0]["role"] in ("developer", "system") else messages
        # final_later[i]: an assistant message without tool calls comes after message i.
        final_later = [False] * len(conversation)
        seen_final = False
        for index in range(len(conversation) - 1, -1, -1):
            final_later[index] = seen_final
            message = conversation[index]
            seen_final = seen_final or (message["role"] == "assistant" and "tool_calls" not in message)
        last_call: str | None = None
        for index, message in enumerate(conversation):
            role, content = message["role"], message["content"]
            if role == "assistant":
                thinking = _gpt_oss_checked(message)
                if "tool_calls" in message:
                    name = _gpt_oss_call(out, message, content, thinking, final_later[index])
                    last_call = name
                else:
                    out.append("<|start|>assistant<|channel|>final<|message|>" + content + "<|end|>")
                    last_call = None
            elif role == "tool":
                if last_call is None:
                    raise Unsupported("a tool message with no tool call before it: the template refuses it")
                out.append(
                    "<|start|>functions."
                    + last_call
                    + " to=assistant<|channel|>commentary<|message|>"
                    + tojson(content)
                    + "<|end|>"
                )
            elif role == "user":
                out.append("<|start|>user<|message|>" + content + "<|end|>")
        out.append("<|start|>assistant")
        return "".join(out)

    def write_layout(self, out: TextWriter, layout: Layout) -> Collection[int]:
        since, keep = layout.since, layout.keep
        messages = layout.request.messages
        today = template_module.strftime_now("%Y-%m-%d")  # the header holds today's date
        dropped: set[int] = set()
        holds_first = False  # the header writes message 0
        if since is None:
            if not messages:
                raise Unsupported("the template needs a message")
            header = self._header.layout(layout, messages[0], today)
            out.write_content(header.text, header.ends)
            dropped.update(header.dropped)
            holds_first = header.holds_first
            conversation = messages[1:] if holds_first else messages
        else:
            conversation = messages
        write = out.write
        final_later = [False] * len(conversation)  # an assistant message without tool calls comes later
        seen_final = False
        for position in range(len(conversation) - 1, -1, -1):
            final_later[position] = seen_final
            message = conversation[position]
            seen_final = seen_final or (message.role == "assistant" and not message.calls)
        # A turn with tool calls keeps its text only if no final answer comes after it: whether
        # one does, while such a turn waits for it, and the date are what a resumption looks
        # ahead at. ``waiting``: a turn with calls and text since the last final answer.
        if since is not None:
            last_call, waiting = since.state
            layout.expect_context((seen_final if waiting else None, today))
        else:
            last_call, waiting = None, False
            if keep == 0 and holds_first:
                out.keep_here(0, (None, today), (None, False))
        for position, message in enumerate(conversation):
            role, content = message.role, message.content
            if role == "assistant":
                thinking = _plain_thinking(message)
                if message.calls:
                    if content and thinking:
                        raise Unsupported("both content and thinking with tool calls: the template refuses it")
                    waiting = waiting or bool(content or thinking)
                    if (content or thinking) and not final_later[position]:
                        write("<|start|>assistant<|channel|>analysis<|message|>")
                        if content:
                            out.write_content(content, message.text_ends)
                        else:
                            write(thinking or "")
                        write("<|end|>")
                    else:
                        dropped.update(block for block, _ in message.text_ends)
                    (block, call), *others = message.calls
                    dropped.update(other for other, _ in others)  # the template writes the first call only
                    name, arguments, end = _call_layout(call)
                    write("<|start|>assistant to=functions." + name + "<|channel|>commentary json<|message|>")
                    out.write_ending(arguments + "<|call|>", block, end)
                    last_call = name
                else:
                    write("<|start|>assistant<|channel|>final<|message|>")
                    out.write_content(content, message.text_ends)
                    write("<|end|>")
                    last_call, waiting = None, False
            elif role == "tool":
                if last_call is None:
                    raise Unsupported("a tool message with no tool call before it: the template refuses it")
                write("<|start|>functions." + last_call + " to=assistant<|channel|>commentary<|message|>")
                # tojson escapes character by character: a text that ends at e in the content ends
                # where the JSON of content[:e] ends, before its closing quote.
                out.note_ends(message.text_ends, lambda end, content=content: len(tojson(content[:end])) - 1)
                write(tojson(content) + "<|end|>")
            elif role == "user":
                write("<|start|>user<|message|>")
                out.write_content(content, message.text_ends)
                write("<|end|>")
            else:
                dropped.update(block for block, _ in message.text_ends)  # a later system or developer message
            if message.index == keep:
                out.keep_here(keep, (final_later[position] if waiting else None, today), (last_call, waiting))
        write("<|start|>assistant")
        return dropped


_GPT_OSS_CHANNEL_TAGS = ("<|channel|>analysis<|message|>", "<|channel|>final<|message|>")


def _gpt_oss_checked(message: Mapping[str, Any]) -> str | None:
    """The assistant's thinking, after the template's checks (which raise: jinja then says why)."""
    if any(tag in message["content"] for tag in _GPT_OSS_CHANNEL_TAGS):
        raise Unsupported("channel tags in the content: the template refuses it")
    thinking = message.get("thinking")
    if "thinking" in message and (type(thinking) is not str or any(tag in thinking for tag in _GPT_OSS_CHANNEL_TAGS)):
        raise Unsupported("the thinking is not a string free of channel tags")
    return thinking


def _gpt_oss_call(
    out: list[str], message: Mapping[str, Any], content: str, thinking: str | None, final_later: bool
) -> str:
    """Write an assistant turn with tool calls (only the first call is rendered); its function's name."""
    calls = message["tool_calls"]
    if type(calls) is not list or not calls or type(calls[0]) is not dict:
        raise Unsupported("tool_calls must be a list of objects")
    call = calls[0]
    function = call.get("function")
    tool_call = function if function else call
    if type(tool_call) is not dict or type(tool_call.get("name")) is not str or "arguments" not in tool_call:
        raise Unsupported("a tool call needs a string name and its arguments")
    content_type = tool_call.get("content_type", "json")
    if type(content_type) is not str:
        raise Unsupported("content_type must be a string")
    if content and thinking:
        raise Unsupported("both content and thinking with tool calls: the template refuses it")
    if content and not final_later:
        out.append("<|start|>assistant<|channel|>analysis<|message|>" + content + "<|end|>")
    elif thinking and not final_later:
        out.append("<|start|>assistant<|channel|>analysis<|message|>" + thinking + "<|end|>")
    name: str = tool_call["name"]
    out.append("<|start|>assistant to=")
    out.append("functions." + name + "<|channel|>commentary ")
    out.append(content_type + "<|message|>")
    out.append(tojson(tool_call["arguments"]))
    out.append("<|call|>")
    return name


def _plain_thinking(message: PlainMessage) -> str | None:
    """The assistant's thinking (the request's ``reasoning``), after the template's checks."""
    if any(tag in message.content for tag in _GPT_OSS_CHANNEL_TAGS):
        raise Unsupported("channel tags in the content: the template refuses it")
    thinking = message.source.get("reasoning")
    if thinking is not None and (type(thinking) is not str or any(tag in thinking for tag in _GPT_OSS_CHANNEL_TAGS)):
        raise Unsupported("the thinking is not a string free of channel tags")
    return thinking


def _call_layout(call: Any) -> tuple[str, str, int]:
    """A call's name, its arguments as the template writes them, and where its block ends in those."""
    name, _ = plain_call(call)
    # Arguments without a string: the mark is on the name, which the template writes twice; then
    # the mark is not in what _arguments writes, and the sentinel method decides.
    return (name, *call_layout(call, _arguments))


def _arguments(function: Mapping[str, Any]) -> str:
    return tojson(function["arguments"])
