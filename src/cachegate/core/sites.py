"""The request as a sequence of blocks (SPEC §4 order), each with the marker sites it carries.

Validation, stripping and hashing all walk the request through ``iter_sites``, so "the last
block", "the block a marker stands on" and "what is hashed" can never disagree between them.
The walk runs on every request, so sites are plain tuples (a NamedTuple costs ten times more
to build, and an 8 KB body has dozens of blocks).

Decisions where the SPEC is silent (malformed bodies are the upstream's business, so they must
not crash us, and everything that reaches the upstream must stay inside the hash):
- ``content``: a string is one text part — ``""`` included, so ``"s"`` and
  ``[{"type": "text", "text": s}]`` are the same prompt for every ``s``; a list is one part per
  element; ``null``, absent and ``[]`` mean no content. Content of any other type is not parts:
  it stays in the message header, and so in the hash.
- ``tool_calls`` are blocks whatever the message's role (in practice only assistants send them);
  ignoring them elsewhere would let two different prompts hash alike. A ``tool_calls`` that is
  neither a list nor ``null`` stays in the header.
- A message that is not an object, or that has no parts and no tool calls, is one header-only block.
- ``tools`` or ``messages`` that are not lists contribute no blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, TypeAlias

from cachegate.core.types import BlockKind

MARKER_KEY: Final = "cache_control"

Site: TypeAlias = tuple[BlockKind, int | None, int | None, Any, Any, bool, bool]
"""One block: ``(kind, message, index, value, owner, first, last)``.

``message`` and ``index`` are those of ``types.BlockRef``. ``value`` is the JSON value the block
hashes — the tool, the part (string content becomes a fresh text part), the tool call —, None
for a header-only block; when it is an object, its ``cache_control`` is the block's own marker.
``owner`` is the message the block belongs to (None for a tool): its header is folded into the
block when ``first``, and its own ``cache_control`` lands on the block when ``last``.
"""

_TOOL: Final = BlockKind.TOOL
_PART: Final = BlockKind.PART
_TOOL_CALL: Final = BlockKind.TOOL_CALL
_HEADER: Final = BlockKind.HEADER


def iter_sites(body: Mapping[str, Any]) -> Iterator[Site]:
    """The blocks of ``body`` in prompt order: the tools, then each message's parts and calls."""
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            yield _TOOL, None, i, tool, None, False, False
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            yield _HEADER, m, None, None, message, True, True
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts: list[Any] = [{"type": "text", "text": content}]
        else:
            parts = content if isinstance(content, list) else []
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            calls = []
        last = len(parts) + len(calls) - 1
        if last < 0:
            yield _HEADER, m, None, None, message, True, True
            continue
        for j, part in enumerate(parts):
            yield _PART, m, j, part, message, j == 0, j == last
        offset = len(parts)
        for k, call in enumerate(calls):
            yield _TOOL_CALL, m, k, call, message, offset + k == 0, offset + k == last


def marker_param(kind: BlockKind, message: int | None, index: int | None) -> str:
    """The JSON path of a block's own marker, for 400s."""
    if kind is _TOOL:
        return f"tools[{index}].{MARKER_KEY}"
    if kind is _PART:
        return f"messages[{message}].content[{index}].{MARKER_KEY}"
    if kind is _TOOL_CALL:
        return f"messages[{message}].tool_calls[{index}].{MARKER_KEY}"
    return message_marker_param(message)


def message_marker_param(message: int | None) -> str:
    return f"messages[{message}].{MARKER_KEY}"


def message_header(message: Any) -> Any:
    """The message minus what is hashed as blocks and its marker (§4): role, name, tool_call_id, …

    ``content`` and ``tool_calls`` leave the header only when they have a shape that makes blocks
    (or means "none"); a message that is not an object is its own header.
    """
    if not isinstance(message, dict):
        return message
    header = {key: value for key, value in message.items() if key not in _NOT_HEADER}
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        header["content"] = content
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        header["tool_calls"] = calls
    return header


_NOT_HEADER: Final = frozenset({"content", "tool_calls", MARKER_KEY})
