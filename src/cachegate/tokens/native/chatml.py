"""What the Qwen2.5 and Qwen3 templates share: the tools prompt, tool calls and tool results.

Both write ChatML turns (``<|im_start|>role\\n…<|im_end|>\\n``), list the tools as JSON in the
system turn with the same words around them, write a call as a ``<tool_call>`` JSON object, and
gather consecutive tool results into one user turn. They differ in how a call's arguments are
written: Qwen3 writes a string as it is, Qwen2.5 always as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cachegate.tokens.native.plain import PlainMessage, TextWriter
from cachegate.tokens.template import as_output, tojson

TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
MISSING = object()


def tool_call_text(function: Mapping[str, Any], arguments_as_json: bool) -> str:
    """A prepared call's function as the template writes it (without the newline before it)."""
    name = function.get("name", MISSING)
    arguments = function["arguments"]
    return (
        '<tool_call>\n{"name": "'
        + ("" if name is MISSING else as_output(name))
        + '", "arguments": '
        + (arguments if type(arguments) is str and not arguments_as_json else tojson(arguments))
        + "}\n</tool_call>"
    )


def render_tool_result(out: list[str], messages: Sequence[Mapping[str, Any]], index: int) -> None:
    """A prepared tool message, in the user turn it shares with the tool messages next to it."""
    if index == 0 or messages[index - 1]["role"] != "tool":
        out.append("<|im_start|>user")
    out.append("\n<tool_response>\n" + messages[index]["content"] + "\n</tool_response>")
    if index == len(messages) - 1 or messages[index + 1]["role"] != "tool":
        out.append("<|im_end|>\n")


def lay_out_tool_result(out: TextWriter, raw: list[Any], message: PlainMessage) -> None:
    """``render_tool_result`` from the request (``raw``: its messages, each a dict with a string role)."""
    index = message.index
    if index == 0 or raw[index - 1]["role"] != "tool":
        out.write("<|im_start|>user")
    out.write("\n<tool_response>\n")
    out.write_content(message.content, message.text_ends)
    out.write("\n</tool_response>")
    if index == len(raw) - 1 or raw[index + 1]["role"] != "tool":
        out.write("<|im_end|>\n")


def followed_by_tool(raw: list[Any], index: int) -> bool | None:
    """For a tool message, whether another follows it (they then share a turn); None for others.

    What a rendering up to the end of message ``index`` looks ahead at (``Resumption``).
    """
    if raw[index]["role"] != "tool":
        return None
    return index < len(raw) - 1 and raw[index + 1]["role"] == "tool"


def arguments_as_they_are(function: Mapping[str, Any]) -> str:
    """Qwen3's call: string arguments as they are, others as JSON."""
    return tool_call_text(function, arguments_as_json=False)


def arguments_as_json(function: Mapping[str, Any]) -> str:
    """Qwen2.5's call: the arguments always as JSON."""
    return tool_call_text(function, arguments_as_json=True)
