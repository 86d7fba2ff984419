"""Chat templates reproduced in plain Python, for the templates most requests go through.

A jinja template walks every message of the conversation on every count, twice (with and
without boundary marks); at a few hundred messages that is tens of milliseconds, and it is
the whole cost of counting a conversation whose prefix is already tokenized (``pieces.py``).
The same text built with string operations takes a fraction of a millisecond.

A native renderer stands in for one template — Qwen3's, and gpt-oss's (whose header jinja
still renders) — recognized by the SHA-256 of its source: any other text, a template edited
by one character, is rendered by jinja. It reproduces the template for the conversations
``conversation.prepare_chat`` produces (string roles and contents, tool calls with a function
object) and raises ``Unsupported`` for anything else, which jinja then renders.
tests/tokens/test_native_templates.py holds every renderer to its template's jinja rendering,
marks included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from cachegate.tokens.template import NativeRenderer, Unsupported, compile_template, tojson


def native_renderer(source: str) -> NativeRenderer | None:
    """The native renderer of the template ``source``, if there is one for exactly this text."""
    digest = hashlib.sha256(source.encode()).hexdigest()
    if digest == _QWEN3_SHA256:
        return render_qwen3
    if digest == _GPT_OSS_SHA256:
        return GptOssRenderer(compile_template(source))
    return None


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


class GptOssRenderer:
    """gpt-oss's chat template (openai/gpt-oss-20b and -120b): the header by the template itself,
    the conversation in Python.

    The header — system message, developer instructions, the tools as a TypeScript namespace —
    depends on the tools, the first message and the variables only; jinja renders it from a
    one-message conversation. The conversation is where jinja spends its time: for each
    assistant tool call it looks through every later message for a final answer, which makes
    the template quadratic in the number of messages; here that is one pass from the end.
    """

    def __init__(self, template: jinja2.Template) -> None:
        self._template = template

    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        variables: Mapping[str, Any],
    ) -> str:
        if not messages or not all(
            type(message) is dict and type(message.get("role")) is str and type(message.get("content")) is str
            for message in messages
        ):
            raise Unsupported("messages must be dicts with string roles and contents")
        out = [self._header(messages[0], tools, variables)]
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

    def _header(
        self, first: Mapping[str, Any], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
    ) -> str:
        """The system and developer messages, as the template renders them before the conversation."""
        if first["role"] in ("developer", "system"):
            return self._render([first], tools, variables)
        # The header is the same whatever the first message is; a user message then follows it.
        rendered = self._render([_GPT_OSS_PROBE], tools, variables)
        if not rendered.endswith(_GPT_OSS_PROBE_RENDERED):
            raise Unsupported("the header could not be told apart from the conversation")
        return rendered[: -len(_GPT_OSS_PROBE_RENDERED)]

    def _render(
        self, messages: list[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None, variables: Mapping[str, Any]
    ) -> str:
        return self._template.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=False, **variables
        )


_GPT_OSS_PROBE = {"role": "user", "content": ""}
_GPT_OSS_PROBE_RENDERED = "<|start|>user<|message|><|end|>"
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


# Qwen3 (every size of the release), the template the shipped tokenizer_config.json holds.
_QWEN3_SHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"
# gpt-oss-20b and gpt-oss-120b, as published with the models.
_GPT_OSS_SHA256 = "a4c9919cbbd4acdd51ccffe22da049264b1b73e59055fa58811a99efbd7c8146"
