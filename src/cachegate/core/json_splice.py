"""The forwarded body as the client's own bytes with the few edits SPEC §2.4 makes (§3.4).

Parsing a body and serialising it again is not neutral: integers beyond 64 bits become floats,
duplicate keys collapse, numbers and escapes are respelt. So the body that goes upstream is the
client's text, spliced: every marker member cut out (with one neighbouring comma), the top-level
``model``'s value replaced, and ``stream_options.include_usage`` set where a stream needs its
usage. Everything else, key order and whitespace included, is the client's byte for byte.

Two ways find where to cut, both on text that already parsed as JSON:
- The fast one searches the text for keys (any spelling, ``\\u`` escapes included). A key found
  there is a key, never string content (a quote inside a string is escaped). When the number of
  ``cache_control`` keys in the whole text equals the number of markers the parsed body had, every
  such key is a marker — none elsewhere, no duplicate — so all of them go; one ``model`` key is the
  top-level one.
- Otherwise (a ``cache_control`` property in a tool's schema, a duplicate key, a ``model`` property
  somewhere below, a ``stream_options`` to edit) a walk of the layout (tools, messages, their parts
  and calls) finds the members by position, skipping the values it does not enter with the
  standard library's C scanner.
Hand-written because no JSON library reports positions; both ways share one cutting rule.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Iterable
from typing import Final

import orjson

from cachegate.core.layout import MARKER_KEY

_MODEL: Final = "model"
_STREAM_OPTIONS: Final = "stream_options"
_INCLUDE_USAGE: Final = "include_usage"
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_SCAN: Final = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner: (value, end) of the value at idx

Member = tuple[str, int, int, int]
"""An object's member: ``(key, key start, value start, value end)``, positions in the text."""

Edit = tuple[int, int, str]
"""Replace ``text[start:end]`` with the string."""


def _key_pattern(name: str) -> str:
    """A JSON string equal to ``name`` however it is spelt, used as a key: a quote no backslash
    precedes (a quote inside a string always has one), each character itself or its ``\\u`` escape."""
    spelt = "".join(f"(?:{re.escape(char)}|\\\\u(?i:{ord(char):04x}))" for char in name)
    return f'(?<!\\\\)"{spelt}"[ \\t\\n\\r]*:'


_KEYS: Final = re.compile(
    "|".join(f"(?P<{group}>{_key_pattern(name)})" for group, name in (("marker", MARKER_KEY), ("model", _MODEL)))
)
_HAS_STREAM_OPTIONS: Final = re.compile(_key_pattern(_STREAM_OPTIONS))


def splice(raw: bytes, markers: int, model: str | None, include_usage: bool) -> bytes:
    """``raw`` (a JSON object that parsed, whose markers numbered ``markers``) with its markers removed,
    its top-level ``model`` set to ``model`` (None: kept), and, with ``include_usage``,
    ``stream_options.include_usage`` set to true."""
    text = raw.decode()
    edits = _fast_edits(text, markers, model, include_usage)
    if edits is None:
        edits = _walked_edits(text, model, include_usage)
    return _apply(text, edits).encode() if edits else raw


def _fast_edits(text: str, markers: int, model: str | None, include_usage: bool) -> list[Edit] | None:
    """The edits found by searching for keys, or None when the search cannot tell which keys are meant."""
    marker_keys: list[re.Match[str]] = []
    model_keys: list[re.Match[str]] = []
    for found in _KEYS.finditer(text):
        (marker_keys if found.lastgroup == "marker" else model_keys).append(found)
    if len(marker_keys) != markers or (model is not None and len(model_keys) != 1):
        return None
    if include_usage and _HAS_STREAM_OPTIONS.search(text):
        return None
    edits = [_cut(text, key.start(), _value_end(text, _skip(text, key.end()))) for key in marker_keys]
    if model is not None:
        value_start = _skip(text, model_keys[0].end())
        edits.append((value_start, _value_end(text, value_start), _json(model)))
    if include_usage:
        edits.append(_opening(text, _skip(text, 0), f'"{_STREAM_OPTIONS}":{{"{_INCLUDE_USAGE}":true}}'))
    return edits


def _walked_edits(text: str, model: str | None, include_usage: bool) -> list[Edit]:
    """The edits found by walking the request's layout (``layout.iter_sites``'s marker sites)."""
    start = _skip(text, 0)
    top = _members(text, start)
    edits = _removals(text, top, MARKER_KEY)
    for key, _, value_start, value_end in top:
        if key == _MODEL and model is not None:
            edits.append((value_start, value_end, _json(model)))
        elif key == "tools":
            edits.extend(_element_markers(text, value_start))
        elif key == "messages":
            for element_start, _ in _elements(text, value_start):
                if text[element_start] != "{":
                    continue
                message = _members(text, element_start)
                edits.extend(_removals(text, message, MARKER_KEY))
                for name, _, inner_start, _ in message:
                    if name in ("content", "tool_calls"):
                        edits.extend(_element_markers(text, inner_start))
    if include_usage:
        edits.extend(_usage_edits(text, start, top))
    return edits


def _usage_edits(text: str, start: int, top: list[Member]) -> list[Edit]:
    """Set ``stream_options.include_usage`` to true: in each ``stream_options`` object, or a new one."""
    options = [member for member in top if member[0] == _STREAM_OPTIONS]
    if not options:
        return [_opening(text, start, f'"{_STREAM_OPTIONS}":{{"{_INCLUDE_USAGE}":true}}')]
    edits: list[Edit] = []
    for _, _, value_start, value_end in options:
        if text[value_start] != "{":
            edits.append((value_start, value_end, f'{{"{_INCLUDE_USAGE}":true}}'))
            continue
        inner = [member for member in _members(text, value_start) if member[0] == _INCLUDE_USAGE]
        if not inner:
            edits.append(_opening(text, value_start, f'"{_INCLUDE_USAGE}":true'))
        edits.extend((flag_start, flag_end, "true") for _, _, flag_start, flag_end in inner)
    return edits


def _element_markers(text: str, start: int) -> Iterable[Edit]:
    """The marker removals of the objects in the array at ``start`` (nothing if it is not an array)."""
    if text[start] != "[":
        return
    for element_start, _ in _elements(text, start):
        if text[element_start] == "{":
            yield from _removals(text, _members(text, element_start), MARKER_KEY)


def _removals(text: str, members: list[Member], name: str) -> list[Edit]:
    """Cut every member called ``name``; a run of them goes with the comma that joined it to the rest."""
    edits: list[Edit] = []
    count = len(members)
    index = 0
    while index < count:
        if members[index][0] != name:
            index += 1
            continue
        last = index
        while last + 1 < count and members[last + 1][0] == name:
            last += 1
        if last + 1 < count:  # up to the next kept member
            edits.append((members[index][1], members[last + 1][1], ""))
        elif index > 0:  # from the end of the kept member before
            edits.append((members[index - 1][3], members[last][3], ""))
        else:
            edits.append((members[index][1], members[last][3], ""))
        index = last + 1
    return edits


def _cut(text: str, key_start: int, value_end: int) -> Edit:
    """Cut the member from ``key_start`` to ``value_end``, with the comma after it, else the one before."""
    after = _skip(text, value_end)
    if text[after] == ",":
        return key_start, _skip(text, after + 1), ""
    before = key_start - 1
    while text[before] in " \t\n\r":
        before -= 1
    if text[before] == ",":
        return before, value_end, ""
    return key_start, value_end, ""


def _opening(text: str, brace: int, member: str) -> Edit:
    """Insert ``member`` first in the object whose ``{`` is at ``brace``."""
    inside = _skip(text, brace + 1)
    return brace + 1, brace + 1, member if text[inside] == "}" else member + ","


def _members(text: str, brace: int) -> list[Member]:
    members: list[Member] = []
    index = _skip(text, brace + 1)
    if text[index] == "}":
        return members
    while True:
        key, key_end = _SCAN(text, index)
        value_start = _skip(text, _skip(text, key_end) + 1)
        value_end = _value_end(text, value_start)
        members.append((key, index, value_start, value_end))
        index = _skip(text, value_end)
        if text[index] == "}":
            return members
        index = _skip(text, index + 1)


def _elements(text: str, bracket: int) -> list[tuple[int, int]]:
    elements: list[tuple[int, int]] = []
    index = _skip(text, bracket + 1)
    if text[index] == "]":
        return elements
    while True:
        end = _value_end(text, index)
        elements.append((index, end))
        index = _skip(text, end)
        if text[index] == "]":
            return elements
        index = _skip(text, index + 1)


def _apply(text: str, edits: list[Edit]) -> str:
    pieces: list[str] = []
    position = 0
    for start, end, replacement in sorted(edits):
        pieces.append(text[position:start])
        pieces.append(replacement)
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _value_end(text: str, start: int) -> int:
    end: int = _SCAN(text, start)[1]
    return end


def _skip(text: str, index: int) -> int:
    found = _WHITESPACE.match(text, index)
    assert found is not None  # the pattern matches the empty string
    return found.end()


def _json(value: str) -> str:
    return orjson.dumps(value).decode()
