"""The chat request as vLLM hands it to a chat template, with optional marks at block ends.

Counts must match the engine, so the request is prepared exactly as vLLM prepares it for a
template whose content format is "string" (``vllm/entrypoints/chat_utils.py``):

- each message keeps ``role`` and a string ``content``: the text parts joined with ``"\\n"``
  (configurable), absent or null content as ``""``; image parts add no text (their cost is
  counted separately); text/refusal parts whose text is null are skipped;
- assistants keep ``tool_calls`` (an empty list is dropped), each call's ``function.arguments``
  parsed from its JSON string (unparsable or missing arguments become ``{}``) and ``reasoning``
  (also offered as ``reasoning_content`` and ``thinking``, as transformers 5 aliases it); tool
  messages keep ``tool_call_id``; a string
  ``name`` is kept; every other message field is dropped;
- tools take the shape of vLLM's validated model: ``{"type", "function": {"name",
  "description", "parameters", …extra keys}, …extra keys}``, missing fields as null.

Markers never reach the template: prepared messages are rebuilt from the fields above, and the
``cache_control`` keys that are markers on tools and tool calls are removed (SPEC §3.4).

A *mark* is a string placed at the end of one block's text, so the renderer can find where
that block ends in the rendered prompt (see ``hf.py``):

- a text part: the end of its text (string content is one text part);
- a tool definition: the end of the last string *value* of its ``function`` object in JSON
  serialisation order (usually the last ``required`` name or a description). The block itself
  ends further on, after the closing brace of the tool's JSON (``tool_end``): the prepared
  chat says how many containers hold the marked string (``PreparedChat.tool_containers``);
- a tool call: the end of the last string value of its parsed ``arguments``, or of its
  function ``name`` when the arguments hold no string.
  Only what templates render is marked (a call's ``id`` or ``type`` often is not), and keys
  never are: they are the structure templates navigate by (a marked ``"arguments"`` key would
  hide the arguments). For a call, the closing JSON characters after the marked string, and
  for a call whose arguments hold no string the arguments themselves, count with what follows.

Blocks without text of their own (images, empty or whitespace-only texts, header-only
messages) take no mark: it would be their whole content, templates test content for
emptiness, and templates that trim would keep whitespace for a mark's sake.

With ``before_trailing_space`` a mark goes before the trailing whitespace of its string, for
templates that ``trim`` text (the whitespace then counts with what follows). With
``prose_only`` a tool definition is marked at the last ``description`` string of its function
object (else at its ``name``), for templates that compare schema strings — gpt-oss tests
``name in parameters.required`` and ``type == "string"`` — so that a mark there would change
the rendering; ``tool_end`` then finds the tool's closing brace after the schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachegate.core.types import BlockKind, BlockRef
from cachegate.tokens.base import TokenCountError

_MARKER_KEY = "cache_control"

# Part type -> the key holding its text (vLLM's MM_PARSER_MAP for text-like parts).
_TEXT_PART_KEYS = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}
_SKIPPED_WHEN_NULL = frozenset({"text", "refusal"})
_IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image_pil", "image_embeds"})


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """What the template receives."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_containers: Mapping[int, int] = field(default_factory=dict)
    """Tool index -> how many JSON containers (the tool, its function, …) hold its marked string."""

    def block_end(self, ref: BlockRef, rendering: str, mark_offset: int) -> int:
        """Where block ``ref``, whose mark was found at ``mark_offset`` of ``rendering``, ends there."""
        if ref.kind is not BlockKind.TOOL or ref.index not in self.tool_containers:
            return mark_offset
        return tool_end(rendering, mark_offset, self.tool_containers[ref.index])


def prepare_chat(
    body: Mapping[str, Any],
    content_join: str,
    marks: Mapping[BlockRef, str] | None = None,
    before_trailing_space: bool = False,
    prose_only: bool = False,
) -> PreparedChat:
    """Prepare ``body`` for the template, placing ``marks`` at the ends of their blocks."""
    return ChatPreparation(body, content_join).chat(marks, before_trailing_space, prose_only)


@dataclass(frozen=True, slots=True)
class _MessageSkeleton:
    """A message checked and taken apart once, to be put together with or without marks."""

    role: str
    texts: list[tuple[int, str]]  # (part index, its text) for the parts that add text
    calls: list[tuple[dict[str, Any], dict[str, Any]]] | None  # (the call without marker, its function)
    extra: dict[str, Any]  # reasoning, tool_call_id, name


class ChatPreparation:
    """A request checked and prepared once; ``chat`` puts it together with any placement of marks.

    Counting renders a request with and without marks (and with other placements when a
    template needs them): the checks, the parsing of tool-call arguments and the collection
    of text parts happen here, once, and each rendering only assembles dicts.
    """

    def __init__(self, body: Mapping[str, Any], content_join: str) -> None:
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list):
            raise TokenCountError("the request has no messages list")
        self._join = content_join
        self._messages = [_skeleton(message) for message in raw_messages]
        raw_tools = body.get("tools")
        self._tools: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
        if raw_tools is not None:
            if not isinstance(raw_tools, list):
                raise TokenCountError("tools is not a list")
            self._tools = [_tool_skeleton(tool) for tool in raw_tools]

    def chat(
        self,
        marks: Mapping[BlockRef, str] | None = None,
        before_trailing_space: bool = False,
        prose_only: bool = False,
    ) -> PreparedChat:
        placer = _Placer(marks or {}, before_trailing_space, prose_only)
        messages = [placer.message(i, skeleton, self._join) for i, skeleton in enumerate(self._messages)]
        tools = None if self._tools is None else [placer.tool(i, *skeleton) for i, skeleton in enumerate(self._tools)]
        return PreparedChat(messages=messages, tools=tools, tool_containers=placer.tool_containers)


def prepared_tool(
    tool: Any, mark: str | None = None, prose_only: bool = False, before_trailing_space: bool = False
) -> dict[str, Any]:
    """One tool as ``prepare_chat`` prepares it, with ``mark`` where its block ends."""
    placer = _Placer({BlockRef(_TOOL, None, 0): mark} if mark else {}, before_trailing_space, prose_only)
    return placer.tool(0, *_tool_skeleton(tool))


def prepared_call(call: Any, mark: str | None = None, before_trailing_space: bool = False) -> dict[str, Any]:
    """One assistant tool call as ``prepare_chat`` prepares it, with ``mark`` where its block ends."""
    placer = _Placer({BlockRef(_TOOL_CALL, 0, 0): mark} if mark else {}, before_trailing_space, False)
    shell, function = _call_skeleton(call)
    return {**shell, "function": placer.tool_call_function(0, 0, function)}


def _skeleton(message: Any) -> _MessageSkeleton:
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise TokenCountError("a message is not an object with a string role")
    role = message["role"]
    content = message.get("content")
    if type(content) is str:  # the common case: one text part
        texts = [(0, content)]
    else:
        texts = [(j, text) for j, part in enumerate(_content_parts(message)) if (text := _part_text(part)) is not None]
    calls: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
    extra: dict[str, Any] = {}
    if role == "assistant":
        raw_calls = message.get("tool_calls")
        if raw_calls is not None:
            if not isinstance(raw_calls, list):
                raise TokenCountError("tool_calls is not a list")
            if raw_calls:
                calls = [_call_skeleton(call) for call in raw_calls]
        reasoning = message.get("reasoning")
        if reasoning is not None:
            extra["reasoning"] = reasoning
            extra["reasoning_content"] = reasoning
            extra["thinking"] = reasoning  # transformers 5 aliases it so; gpt-oss reads this one
    elif role == "tool" and "tool_call_id" in message:
        extra["tool_call_id"] = message["tool_call_id"]
    if isinstance(message.get("name"), str):
        extra["name"] = message["name"]
    return _MessageSkeleton(role, texts, calls, extra)


def _call_skeleton(call: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise TokenCountError("a tool call is not an object with a function")
    function = {**call["function"], "arguments": _parsed_arguments(call["function"].get("arguments"))}
    return {k: v for k, v in call.items() if k != _MARKER_KEY}, function


def _tool_skeleton(tool: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(tool, Mapping) or not isinstance(tool.get("function"), Mapping):
        raise TokenCountError("a tool is not an object with a function")
    function = tool["function"]
    shaped_function = {
        "name": function.get("name"),
        "description": function.get("description"),
        "parameters": function.get("parameters"),
        **{k: v for k, v in function.items() if k not in ("name", "description", "parameters")},
    }
    rest = {k: v for k, v in tool.items() if k not in ("type", "function", _MARKER_KEY)}
    return {"type": tool.get("type", "function"), **rest}, shaped_function


def is_image_part(part: Any) -> bool:
    """Whether a content part is an image (its cost is the configured tokens per image)."""
    if not isinstance(part, Mapping):
        return False
    part_type = part.get("type")
    if part_type is None:
        return any(key in part for key in _IMAGE_PART_TYPES)
    return part_type in _IMAGE_PART_TYPES


def has_own_text(text: str | None) -> bool:
    """Whether a text part's block can be marked: whitespace alone is not, as templates that
    trim would keep it for the mark's sake."""
    return bool(text and not text.isspace())


def _part_text(part: Any) -> str | None:
    """The text a content part contributes to the joined content; None if it adds none."""
    if isinstance(part, str):
        return part
    if not isinstance(part, Mapping):
        raise TokenCountError("a content part is neither an object nor a string")
    part_type = part.get("type")
    key = _TEXT_PART_KEYS.get(part_type) if isinstance(part_type, str) else None
    if key is not None:
        text = part.get(key)
        if text is None and part_type in _SKIPPED_WHEN_NULL:
            return None
        if not isinstance(text, str):
            raise TokenCountError(f"a {part_type!r} content part has no text")
        return text
    if is_image_part(part):
        return None
    # Audio, video, embeddings…: the engine's token cost for them is not known here.
    kind = part_type if isinstance(part_type, str) and part_type.isidentifier() else "untyped"
    raise TokenCountError(f"content parts of type {kind!r} cannot be counted")


def _content_parts(message: Mapping[str, Any]) -> list[Any]:
    """A message's content as parts: string content is one text part, absent content none."""
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return content
    raise TokenCountError("a message content is neither a string, a list nor null")


_RefKey = tuple[BlockKind, int | None, int | None]  # a BlockRef's fields
_PART, _TOOL, _TOOL_CALL = BlockKind.PART, BlockKind.TOOL, BlockKind.TOOL_CALL


class _Placer:
    """Puts prepared messages and tools together, each block's mark where its text ends."""

    def __init__(self, marks: Mapping[BlockRef, str], before_trailing_space: bool, prose_only: bool) -> None:
        # Keyed by plain tuples: a tuple hashes in C, a BlockRef through its generated __hash__.
        self._marks = {(ref.kind, ref.message, ref.index): mark for ref, mark in marks.items()}
        self._before_trailing_space = before_trailing_space
        self._prose_only = prose_only
        self.tool_containers: dict[int, int] = {}
        """Tool index -> the containers around its mark, counted from the tool object itself."""

    def message(self, index: int, skeleton: _MessageSkeleton, content_join: str) -> dict[str, Any]:
        texts = skeleton.texts
        if self._marks:
            texts = [(j, self._marked((_PART, index, j), text)) for j, text in texts]
        content = texts[0][1] if len(texts) == 1 else content_join.join(text for _, text in texts)
        prepared: dict[str, Any] = {"role": skeleton.role, "content": content}
        if skeleton.calls is not None:
            prepared["tool_calls"] = [
                {**call, "function": self.tool_call_function(index, k, function)}
                for k, (call, function) in enumerate(skeleton.calls)
            ]
        prepared.update(skeleton.extra)
        return prepared

    def tool_call_function(self, message: int, index: int, function: dict[str, Any]) -> dict[str, Any]:
        return self._with_mark((_TOOL_CALL, message, index), function, ("arguments",))[0]

    def tool(self, index: int, shell: dict[str, Any], function: dict[str, Any]) -> dict[str, Any]:
        marked, containers = self._with_mark((_TOOL, None, index), function, ())
        if containers is not None:
            self.tool_containers[index] = containers + 1  # and the tool object around the function
        return {"type": shell["type"], "function": marked, **{k: v for k, v in shell.items() if k != "type"}}

    def _marked(self, ref: _RefKey, text: str) -> str:
        mark = self._marks.get(ref)
        return self._place(text, mark) if mark else text

    def _with_mark(
        self, ref: _RefKey, function: dict[str, Any], preferred: tuple[str, ...]
    ) -> tuple[dict[str, Any], int | None]:
        """Mark the last string value of ``function``, looking inside the ``preferred`` keys first.

        Also how many containers, ``function`` included, hold the marked string (None: no mark).
        """
        mark = self._marks.get(ref)
        if not mark:
            return function, None
        if self._prose_only and ref[0] is _TOOL:
            marked, containers = self._with_mark_in_last(function, mark, _a_description)
            if containers is not None:
                return marked, containers
            if isinstance(function.get("name"), str):
                return {**function, "name": self._place(function["name"], mark)}, 1
        for key in (*preferred, None):
            scope = function if key is None else {key: function.get(key)}
            marked, containers = self._with_mark_in_last(scope, mark, _any_string)
            if containers is not None:
                return {**function, **marked}, containers
        raise TokenCountError(f"a {ref[0].value} block has no string value to mark")

    def _with_mark_in_last(
        self, value: Any, mark: str, wanted: Callable[[Any, str], bool], key: Any = None
    ) -> tuple[Any, int | None]:
        """Mark the last string in ``value`` (in JSON order) that ``wanted(its key, it)`` accepts.

        Containers on the way to it are copied; ``value`` itself is left as it is. The count is
        how many containers, ``value`` included, hold the marked string; None when none was marked.
        """
        if isinstance(value, str):
            return (self._place(value, mark), 0) if wanted(key, value) else (value, None)
        if isinstance(value, Mapping):
            for inner in reversed(list(value)):
                marked, containers = self._with_mark_in_last(value[inner], mark, wanted, inner)
                if containers is not None:
                    return {**value, inner: marked}, containers + 1
        elif isinstance(value, list):
            for position in reversed(range(len(value))):
                marked, containers = self._with_mark_in_last(value[position], mark, wanted)
                if containers is not None:
                    return [*value[:position], marked, *value[position + 1 :]], containers + 1
        return value, None

    def _place(self, text: str, mark: str) -> str:
        if not self._before_trailing_space:
            return text + mark
        kept = len(text.rstrip())
        return text[:kept] + mark + text[kept:]


# The rest of a JSON string literal, then one JSON token: an opening, a closing, or anything else.
_JSON_STRING_REST = re.compile(r'(?:[^"\\\x00-\x1f]|\\.)*"')
_JSON_TOKEN = re.compile(
    r'[ \t\n\r]*(?:([{\[])|([}\]])|"(?:[^"\\\x00-\x1f]|\\.)*"|[,:]|-?[0-9][0-9.eE+-]*|true|false|null)'
)


def tool_end(rendering: str, mark_offset: int, containers: int) -> int:
    """Where a tool ends in ``rendering``: past the closing brace of its JSON, whose last marked
    string ends at ``mark_offset`` inside ``containers`` containers (the tool object included).

    The block of a tool is its whole definition, so its count includes the JSON that closes it.
    A template that writes tools otherwise than as JSON (XML, TypeScript) keeps ``mark_offset``:
    no text of the template is counted as the tool's.
    """
    string_end = _JSON_STRING_REST.match(rendering, mark_offset)
    if string_end is None:
        return mark_offset
    position, depth = string_end.end(), containers
    while depth:
        token = _JSON_TOKEN.match(rendering, position)
        if token is None:
            return mark_offset
        if token.group(1):
            depth += 1
        elif token.group(2):
            depth -= 1
        position = token.end()
    return position


def _any_string(key: Any, text: str) -> bool:
    return True


def _a_description(key: Any, text: str) -> bool:
    return key == "description" and bool(text)


def _parsed_arguments(arguments: Any) -> Any:
    """vLLM hands templates the arguments as an object: parsed JSON, ``{}`` when that fails."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return {}
    if isinstance(arguments, (dict, list)):
        return arguments
    return {}


@dataclass(frozen=True, slots=True)
class BlockTraits:
    """What a block brings to the rendering."""

    has_text: bool  # text of its own reaches the template, so the block can be marked
    is_image: bool


_TEXT = BlockTraits(has_text=True, is_image=False)
_NO_TEXT = BlockTraits(has_text=False, is_image=False)
_IMAGE = BlockTraits(has_text=False, is_image=True)


def describe_blocks(body: Mapping[str, Any], refs: Sequence[BlockRef]) -> list[BlockTraits]:
    """The traits of each block of ``refs``, checked against ``body``."""
    messages = body.get("messages")
    tools = body.get("tools")
    traits: list[BlockTraits] = []
    parts_of: tuple[int | None, list[Any]] = (None, [])  # the parts of the message last looked at
    for ref in refs:
        if ref.kind is BlockKind.TOOL:
            if not isinstance(tools, list) or ref.index is None or not 0 <= ref.index < len(tools):
                raise TokenCountError("a tool block does not match the request")
            traits.append(_TEXT)
            continue
        if not isinstance(messages, list) or ref.message is None or not 0 <= ref.message < len(messages):
            raise TokenCountError("a message block does not match the request")
        message = messages[ref.message]
        if not isinstance(message, Mapping):
            raise TokenCountError("a message is not an object")
        if ref.kind is BlockKind.PART:
            if parts_of[0] != ref.message:
                parts_of = (ref.message, _content_parts(message))
            parts = parts_of[1]
            if ref.index is None or not 0 <= ref.index < len(parts):
                raise TokenCountError("a content-part block does not match the request")
            part = parts[ref.index]
            text = _part_text(part)
            if has_own_text(text):
                traits.append(_TEXT)
            else:
                traits.append(_IMAGE if is_image_part(part) else _NO_TEXT)
        elif ref.kind is BlockKind.TOOL_CALL:
            calls = message.get("tool_calls")
            if not isinstance(calls, list) or ref.index is None or not 0 <= ref.index < len(calls):
                raise TokenCountError("a tool-call block does not match the request")
            # vLLM passes tool calls of assistant messages only; others never reach the template.
            traits.append(_TEXT if message.get("role") == "assistant" else _NO_TEXT)
        else:
            traits.append(_NO_TEXT)
    return traits
