"""The shape of a chat-completions body, checked before anything is forwarded (SPEC §2.1, §11).

OpenAI and vLLM answer a field of the wrong type with a 400 naming it (``messages[2].content``);
cachegate answers the same, itself, so that a type-confused body never reaches the cache flow or
the upstream. The check covers what cachegate and every OpenAI-compatible server read: the
message list, each message's role, content parts and tool calls, the tools, and the stream
flags. Fields it does not know are the upstream's business and pass untouched.

Limits bound what one body may make the gateway walk: its nesting depth (every route: a body
nested deeper than a JSON library will serialise would otherwise fail far from its cause), and
the number of messages, of parts or tool calls in a message, and of tools.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_MAX_DEPTH: Final = 64
DEFAULT_MAX_MESSAGES: Final = 10_000
DEFAULT_MAX_PARTS: Final = 1_000
DEFAULT_MAX_TOOLS: Final = 1_000


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How large a body's structure may be; the defaults are far above what real clients send."""

    max_depth: int = DEFAULT_MAX_DEPTH  # nested arrays and objects, the top-level object counting 1
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_parts: int = DEFAULT_MAX_PARTS  # content parts, and tool calls, of one message
    max_tools: int = DEFAULT_MAX_TOOLS


DEFAULT_LIMITS: Final = RequestLimits()


class ShapeError(ValueError):
    """A body that is not a chat request: answered with 400 ``invalid_request_error``.

    ``param`` is the JSON path of the offending field in OpenAI's spelling (None when the body as
    a whole is at fault); ``code`` is OpenAI's code for the kind of fault.
    """

    def __init__(self, message: str, *, param: str | None, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# A JSON string token, escapes included (the unrolled loop runs at the regex engine's speed).
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST: Final = re.compile(rb"\[\]|\{\}")


def check_depth(raw: bytes, max_depth: int) -> None:
    """Refuse a JSON text nested deeper than ``max_depth`` arrays and objects.

    Runs on the raw bytes, at the speed of bytes methods: a body with fewer brackets than the
    limit cannot be too deep (the usual case, one count); otherwise strings are cut out and each
    round removes the innermost pairs, one round per level. ``raw`` must be valid JSON.
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    while brackets:
        depth += 1
        if depth > max_depth:
            raise ShapeError(
                f"the request body is nested more than {max_depth} levels deep", param=None, code="nesting_too_deep"
            )
        brackets = _INNERMOST.sub(b"", brackets)


def check_chat_shape(body: Mapping[str, Any], limits: RequestLimits) -> None:
    """Raise ``ShapeError`` for the first field of ``body`` (a chat request) of the wrong type or size."""
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    _require(messages, "messages", _ARRAY)
    _bounded(messages, "messages", limits.max_messages)
    for m, message in enumerate(messages):
        _check_message(message, f"messages[{m}]", limits)
    tools = body.get("tools")
    if tools is not None:
        _require(tools, "tools", _ARRAY)
        _bounded(tools, "tools", limits.max_tools)
        for t, tool in enumerate(tools):
            _check_tool(tool, f"tools[{t}]")
    for name, kinds in _TOP_LEVEL_OPTIONAL:
        value = body.get(name)
        if value is not None:
            _require(value, name, kinds)


def _check_message(message: object, param: str, limits: RequestLimits) -> None:
    _require(message, param, _OBJECT)
    assert isinstance(message, dict)
    role = message.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    _require(role, f"{param}.role", _STRING_TYPE)
    for name in ("name", "tool_call_id"):
        value = message.get(name)
        if value is not None:
            _require(value, f"{param}.{name}", _STRING_TYPE)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        _require(content, f"{param}.content", _CONTENT)
        _bounded(content, f"{param}.content", limits.max_parts)
        for p, part in enumerate(content):
            _check_part(part, f"{param}.content[{p}]")
    calls = message.get("tool_calls")
    if calls is not None:
        _require(calls, f"{param}.tool_calls", _ARRAY)
        _bounded(calls, f"{param}.tool_calls", limits.max_parts)
        for c, call in enumerate(calls):
            _check_call(call, f"{param}.tool_calls[{c}]")


def _check_part(part: object, param: str) -> None:
    _require(part, param, _OBJECT)
    assert isinstance(part, dict)
    kind = part.get("type")
    if kind is not None:
        _require(kind, f"{param}.type", _STRING_TYPE)
    if kind == "text":
        _require(part.get("text"), f"{param}.text", _STRING_TYPE)


def _check_call(call: object, param: str) -> None:
    _require(call, param, _OBJECT)
    assert isinstance(call, dict)
    function = call.get("function")
    if function is not None:
        _require(function, f"{param}.function", _OBJECT)
        assert isinstance(function, dict)
        name = function.get("name")
        if name is not None:
            _require(name, f"{param}.function.name", _STRING_TYPE)


def _check_tool(tool: object, param: str) -> None:
    _require(tool, param, _OBJECT)
    assert isinstance(tool, dict)
    kind = tool.get("type")
    if kind is not None:
        _require(kind, f"{param}.type", _STRING_TYPE)
    function = tool.get("function")
    if function is not None:
        _require(function, f"{param}.function", _OBJECT)
        assert isinstance(function, dict)
        name = function.get("name")
        if name is not None:
            _require(name, f"{param}.function.name", _STRING_TYPE)


@dataclass(frozen=True, slots=True)
class _Kinds:
    """The JSON types a field may have, and how OpenAI's errors name them."""

    types: tuple[type, ...]
    described: str


_ARRAY: Final = _Kinds((list,), "an array")
_OBJECT: Final = _Kinds((dict,), "an object")
_STRING_TYPE: Final = _Kinds((str,), "a string")
_CONTENT: Final = _Kinds((list,), "one of a string, an array of objects or null")
_BOOLEAN: Final = _Kinds((bool,), "a boolean")
_TOP_LEVEL_OPTIONAL: Final = (("stream", _BOOLEAN), ("stream_options", _OBJECT))


def _missing(param: str) -> ShapeError:
    return ShapeError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _require(value: object, param: str, kinds: _Kinds) -> None:
    if not isinstance(value, kinds.types):
        raise ShapeError(
            f"Invalid type for '{param}': expected {kinds.described}, but got {_json_type(value)} instead.",
            param=param,
            code="invalid_type",
        )


def _bounded(items: list[Any], param: str, limit: int) -> None:
    if len(items) > limit:
        raise ShapeError(
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(items)} instead.",
            param=param,
            code="array_above_max_length",
        )


def _json_type(value: object) -> str:
    """The value's JSON type as OpenAI's errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
