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

from collections.abc import Callable, Mapping
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


def check_depth(body: object, max_depth: int) -> None:
    """Refuse a parsed JSON value nested deeper than ``max_depth`` arrays and objects.

    Level by level, containers only (a cheaper walk than any pass over the text: measured in
    bench/forwarding.py); it stops at the first level past the limit.
    """
    level = [body] if type(body) is dict or type(body) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise nesting_error(max_depth)
        below: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below


def nesting_error(max_depth: int) -> ShapeError:
    return ShapeError(
        f"the request body is nested more than {max_depth} levels deep", param=None, code="nesting_too_deep"
    )


def check_chat_shape(body: Mapping[str, Any], limits: RequestLimits) -> None:
    """Raise ``ShapeError`` for the first field of ``body`` (a chat request) of the wrong type or size.

    Runs on every chat request, so a valid body costs type checks only: a field's path is spelt
    out when it is at fault, by the ``_Misshapen`` that each level's caller prefixes.
    """
    try:
        _check_body(body, limits)
    except _Misshapen as fault:
        raise fault.error() from None


class _Misshapen(Exception):
    """A fault at ``path``, relative to the value being checked until the callers complete it."""

    def __init__(self, path: str, value: object = None, expected: str = "", limit: int | None = None) -> None:
        super().__init__(path)
        self.path = path
        self.value = value
        self.expected = expected  # "": a missing field
        self.limit = limit  # not None: an array over this length

    def under(self, prefix: str) -> _Misshapen:
        self.path = prefix + self.path
        return self

    def error(self) -> ShapeError:
        param = self.path
        if self.limit is not None:
            assert isinstance(self.value, list)
            return ShapeError(
                f"Invalid '{param}': array too long. Expected an array with maximum length {self.limit}, "
                f"but got an array with length {len(self.value)} instead.",
                param=param,
                code="array_above_max_length",
            )
        if not self.expected:
            return ShapeError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
        return ShapeError(
            f"Invalid type for '{param}': expected {self.expected}, but got {_json_type(self.value)} instead.",
            param=param,
            code="invalid_type",
        )


_ARRAY: Final = "an array"
_OBJECT: Final = "an object"
_STRING: Final = "a string"
_CONTENT: Final = "one of a string, an array of objects or null"


def _expect(value: object, kind: type, path: str, expected: str) -> None:
    if not isinstance(value, kind):
        raise _Misshapen(path, value, expected)


def _bounded(items: list[Any], path: str, limit: int) -> None:
    if len(items) > limit:
        raise _Misshapen(path, items, limit=limit)


def _check_body(body: Mapping[str, Any], limits: RequestLimits) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _Misshapen("messages")
    _check_each(messages, "messages", limits.max_messages, lambda message: _check_message(message, limits))
    tools = body.get("tools")
    if tools is not None:
        _check_each(tools, "tools", limits.max_tools, _check_tool)
    stream = body.get("stream")
    if stream is not None:
        _expect(stream, bool, "stream", "a boolean")
    options = body.get("stream_options")
    if options is not None:
        _expect(options, dict, "stream_options", _OBJECT)


def _check_message(message: object, limits: RequestLimits) -> None:
    _expect(message, dict, "", _OBJECT)
    assert isinstance(message, dict)
    role = message.get("role")
    if role is None:
        raise _Misshapen(".role")
    _expect(role, str, ".role", _STRING)
    name = message.get("name")
    if name is not None:
        _expect(name, str, ".name", _STRING)
    call_id = message.get("tool_call_id")
    if call_id is not None:
        _expect(call_id, str, ".tool_call_id", _STRING)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        _check_each(content, ".content", limits.max_parts, _check_part, _CONTENT)
    calls = message.get("tool_calls")
    if calls is not None:
        _check_each(calls, ".tool_calls", limits.max_parts, _check_function_holder)


def _check_each(items: object, path: str, limit: int, check: Callable[[object], None], what: str = _ARRAY) -> None:
    """``items`` an array of at most ``limit`` elements, each passing ``check`` (faults placed under ``path[i]``)."""
    _expect(items, list, path, what)
    assert isinstance(items, list)
    _bounded(items, path, limit)
    for index, item in enumerate(items):
        try:
            check(item)
        except _Misshapen as fault:
            raise fault.under(f"{path}[{index}]") from None


def _check_part(part: object) -> None:
    _expect(part, dict, "", _OBJECT)
    assert isinstance(part, dict)
    kind = part.get("type")
    if kind is not None:
        _expect(kind, str, ".type", _STRING)
    if kind == "text":
        _expect(part.get("text"), str, ".text", _STRING)


def _check_tool(tool: object) -> None:
    _check_function_holder(tool)
    assert isinstance(tool, dict)
    kind = tool.get("type")
    if kind is not None:
        _expect(kind, str, ".type", _STRING)


def _check_function_holder(holder: object) -> None:
    """A tool call or a tool: an object whose ``function``, if any, is an object with a string ``name``."""
    _expect(holder, dict, "", _OBJECT)
    assert isinstance(holder, dict)
    function = holder.get("function")
    if function is not None:
        _expect(function, dict, ".function", _OBJECT)
        name = function.get("name")
        if name is not None:
            _expect(name, str, ".function.name", _STRING)


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
