"""The common request shapes, read straight from the body for direct layouts.

A direct layout (``LaidOutPrompt``) writes the rendering and notes where each block's text
ends as it goes, instead of rendering twice and searching for marks. It reads the request as
``conversation.py`` prepares it, but only in the shapes agent traffic has — string roles,
string content or text and image parts, tool calls of assistants, tools — and raises
``Unsupported`` for anything else, which the sentinel method then counts. Within those shapes
a block's text ends where the sentinel method would put its mark (tests hold the two equal).

A layout may also start part way, after a message of an earlier request whose text up to there
is the same (``Resumption``): the request is then read, and the rendering written, from the
next message on — the work of a grown conversation's new turns, whatever its length.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachegate.core.types import BlockKind, BlockRef
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.conversation import has_own_text, is_image_part, prepared_call, prepared_tool
from cachegate.tokens.marks import marked_end
from cachegate.tokens.template import Unsupported, tojson


@dataclass(frozen=True, slots=True)
class Resumption:
    """Where a layout may start again: after message ``message``, at ``offset`` of the rendering.

    The rendering up to ``offset`` is the tools' and messages 0..``message``'s, and whatever of
    the rest of the request the template looked ahead at: ``context`` holds that (a later user
    query, whether the next message is a tool result, the date), as the template computes it
    again for a later request. Equal messages, tools and variables up to there and an equal
    context mean an equal rendering up to ``offset``; ``state`` is what the template needs to
    write on from there.
    """

    message: int
    offset: int
    context: tuple[Any, ...]
    state: Any = None


@dataclass(frozen=True, slots=True)
class LaidOutPrompt:
    """A clean rendering — or its part from ``start`` on — and where, in it, each block's text ends."""

    text: str
    ends: list[tuple[int, int]]
    """(block, offset just past its text), in text order; a block the template renders twice is there twice."""
    dropped: frozenset[int]
    """Blocks with text of their own that the template left out."""
    images: list[int]
    """The blocks that are images, in order (each costs the configured image tokens)."""
    start: int = 0
    """Where ``text`` starts in the whole rendering; offsets (``ends``, ``kept``) are the whole rendering's."""
    kept: Resumption | None = None
    """Where a later request may start its layout again, at the message the caller asked for."""
    marked: bool = False
    """Found by the sentinel method (marks in a rendering), not written by a native layout."""


@dataclass(slots=True)
class PlainMessage:
    """One message: its content as the template sees it, and its blocks."""

    index: int
    role: str
    content: str  # the text parts joined
    text_ends: list[tuple[int, int]]  # (block, offset in ``content`` just past its text), for parts with text
    calls: list[tuple[int, Mapping[str, Any]]]  # (block, the call as sent)
    source: Mapping[str, Any]


@dataclass(slots=True)
class PlainRequest:
    tools: list[tuple[int, Any]] | None  # (block, the tool as sent); None when the request has no tools
    messages: list[PlainMessage]  # messages[i - first] is message i
    images: list[int]
    first: int  # the first message read: 0, or the one after a resumption


def plain_request(
    body: Mapping[str, Any], blocks: Sequence[BlockRef], content_join: str, since: Resumption | None = None
) -> PlainRequest:
    """The request's messages and tools with their blocks, or ``Unsupported``.

    ``blocks`` are the request's blocks in order (tools, then each message's parts and calls).
    With ``since``, from the message after it on only: the tools and earlier messages, which an
    earlier layout read, are not read again.
    """
    first_message = 0 if since is None else since.message + 1
    raw_messages = body.get("messages")
    raw_tools = body.get("tools")
    if type(raw_messages) is not list or not (raw_tools is None or type(raw_tools) is list):
        raise Unsupported("messages must be a list, tools a list or absent")
    position = message_start(blocks, first_message)
    tools: list[tuple[int, Any]] | None = None
    if raw_tools is not None and first_message == 0:
        tools = []
        for k, tool in enumerate(raw_tools):
            _expect(blocks, position, BlockKind.TOOL, None, k)
            tools.append((position, tool))
            position += 1
    messages: list[PlainMessage] = []
    images: list[int] = []
    for i in range(first_message, len(raw_messages)):
        message = raw_messages[i]
        if type(message) is not dict or type(message.get("role")) is not str:
            raise Unsupported("a message is not an object with a string role")
        content = message.get("content")
        first_block = position
        if type(content) is str:
            _expect(blocks, position, BlockKind.PART, i, 0)
            text_ends = [(position, len(content))] if has_own_text(content) else []
            position += 1
        elif content is None or type(content) is list:
            content, text_ends, position = _joined_parts(content or [], blocks, position, i, content_join, images)
        else:
            raise Unsupported("content must be a string, a list of parts or null")
        calls: list[tuple[int, Mapping[str, Any]]] = []
        raw_calls = message.get("tool_calls")
        if raw_calls:
            if message["role"] != "assistant" or type(raw_calls) is not list:
                raise Unsupported("tool calls must be a list on an assistant message")
            for k, call in enumerate(raw_calls):
                _expect(blocks, position, BlockKind.TOOL_CALL, i, k)
                calls.append((position, call))
                position += 1
        if position == first_block:  # no parts and no calls: the message is a header block
            _expect(blocks, position, BlockKind.HEADER, i, None)
            position += 1
        messages.append(PlainMessage(i, message["role"], content, text_ends, calls, message))
    if position != len(blocks):
        raise Unsupported("the blocks do not follow the request")
    return PlainRequest(tools, messages, images, first_message)


def message_start(blocks: Sequence[BlockRef], message: int) -> int:
    """The first block of ``message`` (0 for the first message: the tools come before it)."""
    if message == 0:
        return 0
    # Every message has a block (its header when nothing else), tools' blocks come first.
    return bisect.bisect_left(blocks, message, key=_message_order)


def _message_order(ref: BlockRef) -> int:
    return -1 if ref.message is None else ref.message


def plain_call(call: Any) -> tuple[str, str]:
    """A tool call's function name and JSON arguments, when those are all it holds."""
    function = call.get("function") if type(call) is dict else None
    if type(function) is not dict or function.keys() != {"name", "arguments"}:
        raise Unsupported("a call other than a function's name and arguments")
    name, arguments = function["name"], function["arguments"]
    if type(name) is not str or type(arguments) is not str:
        raise Unsupported("a call whose name or arguments are not strings")
    return name, arguments


def tool_layout(
    tool: Any, write: Callable[[Any], str] = tojson, before_trailing_space: bool = False
) -> tuple[str, int]:
    """A tool as ``write`` writes its prepared form as JSON, and where its block ends in that
    text: its end, the tool's closing brace (``conversation.tool_end``).

    The mark is still placed and found: a tool the sentinel method cannot mark (no string in
    its function) is left to it, which refuses to count it.
    """
    try:
        located = marked_end(lambda one_mark: write(prepared_tool(tool, one_mark, False, before_trailing_space)))
    except (TokenCountError, TypeError, ValueError) as exc:
        raise Unsupported("a tool the sentinel method decides on") from exc
    if located is None:
        raise Unsupported("a tool whose mark is not found")
    text, _ = located
    return text, len(text)


CallWriter = Callable[[Mapping[str, Any]], str]
"""How a template writes a prepared call's function (name and parsed arguments)."""


def call_layout(call: Any, write: CallWriter, before_trailing_space: bool = False) -> tuple[str, int]:
    """A plain tool call as ``write`` writes it, and where its block ends in that text.

    ``before_trailing_space``: the mark's place for templates that trim (``conversation.py``).
    ``write`` must be a module-level function: it is part of the memo's key.
    """
    return _remembered_call_layout(*plain_call(call), write, before_trailing_space)


@functools.lru_cache(maxsize=1 << 16)
def _remembered_call_layout(
    name: str, arguments: str, write: CallWriter, before_trailing_space: bool
) -> tuple[str, int]:
    """Remembered: an agent conversation sends each of its calls again on every turn."""
    call = {"function": {"name": name, "arguments": arguments}}
    located = marked_end(lambda one_mark: write(prepared_call(call, one_mark, before_trailing_space)["function"]))
    if located is None:
        raise Unsupported("a call whose mark is not found where the template writes it")
    return located


def _joined_parts(
    parts: list[Any], blocks: Sequence[BlockRef], position: int, message: int, join: str, images: list[int]
) -> tuple[str, list[tuple[int, int]], int]:
    texts: list[str] = []
    text_ends: list[tuple[int, int]] = []
    length = 0
    for j, part in enumerate(parts):
        _expect(blocks, position, BlockKind.PART, message, j)
        part_type = part.get("type") if type(part) is dict else None
        if part_type == "text" and type(part.get("text")) is str:
            text = part["text"]
            if texts:
                length += len(join)
            texts.append(text)
            length += len(text)
            if has_own_text(text):
                text_ends.append((position, length))
        elif is_image_part(part):
            images.append(position)
        else:
            raise Unsupported("content parts other than text and images")
        position += 1
    return join.join(texts), text_ends, position


def _expect(blocks: Sequence[BlockRef], position: int, kind: BlockKind, message: int | None, index: int | None) -> None:
    if position >= len(blocks):
        raise Unsupported("the blocks do not follow the request")
    ref = blocks[position]
    if ref.kind is not kind or ref.message != message or ref.index != index:
        raise Unsupported("the blocks do not follow the request")


class TextWriter:
    """A rendering written piece by piece, and where each block's text ends in it.

    ``write`` is the parts list's own ``append``, and an end is noted as (block, the part it
    lies in, its offset there): offsets are made absolute once, at the end, at C speed. A
    layout writes a few thousand strings; a Python method per string cost as much again.
    """

    __slots__ = ("_ends", "_kept", "_parts", "_start", "write")

    def __init__(self, start: int = 0) -> None:
        self._start = start  # where the text written starts in the whole rendering
        self._parts: list[str] = []
        self._ends: list[tuple[int, int, int]] = []
        self._kept: tuple[int, int, tuple[Any, ...], Any] | None = None
        self.write = self._parts.append

    def write_content(self, content: str, text_ends: list[tuple[int, int]], skipped: int = 0) -> None:
        """Write ``content[skipped:]``; its text blocks end where they end in ``content``."""
        part = len(self._parts)
        self._ends.extend((block, part, end - skipped) for block, end in text_ends)
        self.write(content[skipped:] if skipped else content)

    def write_ending(self, text: str, block: int, end: int) -> None:
        """Write ``text``, in which ``block``'s text ends at ``end``."""
        self._ends.append((block, len(self._parts), end))
        self.write(text)

    def note_ends(self, text_ends: list[tuple[int, int]], ends_in: Callable[[int], int]) -> None:
        """Note the ends of blocks in the part written next, placed there by ``ends_in``."""
        part = len(self._parts)
        self._ends.extend((block, part, ends_in(end)) for block, end in text_ends)

    def keep_here(self, message: int, context: tuple[Any, ...], state: Any = None) -> None:
        """Offer to resume here, after ``message`` (``Resumption``)."""
        self._kept = (len(self._parts), message, context, state)

    def laid_out(self, dropped: frozenset[int], images: list[int]) -> LaidOutPrompt:
        starts = list(itertools.accumulate(map(len, self._parts), initial=self._start))
        ends = [(block, starts[part] + offset) for block, part, offset in self._ends]
        kept = None
        if self._kept is not None:
            part, message, context, state = self._kept
            kept = Resumption(message, starts[part], context, state)
        return LaidOutPrompt(
            text="".join(self._parts), ends=ends, dropped=dropped, images=images, start=self._start, kept=kept
        )
