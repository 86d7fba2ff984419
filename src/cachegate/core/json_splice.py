"""The forwarded body as the client's own bytes with the few edits SPEC §2.4 makes (§3.4).

Parsing a body and serialising it again is not neutral: integers beyond 64 bits become floats,
duplicate keys collapse, numbers and escapes are respelt. So the body that goes upstream is the
client's text, spliced: every marker member cut out (with one neighbouring comma), the top-level
``model``'s value replaced, ``stream_options.include_usage`` set where a stream needs its usage,
the telemetry flags cut and the principal's ``cache_salt`` set (§12). Everything else, key order
and whitespace included, is the client's byte for byte.

Where to cut is found per key, the cheapest way that is sure, on text that already parsed as JSON:
- A search of the text for the key, in any spelling (``\\u`` escapes included; a plain ``find``
  when the text has no escape of a letter). A key found there is a key, never string content (a
  quote inside a string is escaped). When the number of ``cache_control`` keys in the whole text
  equals the number of markers the parsed body had, every such key is a marker — none elsewhere,
  no duplicate — so all of them go; a single ``model`` key is the top-level one; no
  ``stream_options`` key means one is added first.
- Otherwise (a ``cache_control`` or ``model`` property in a tool's schema, a duplicate key, a
  ``stream_options`` to edit) a walk by position: the top-level members for ``model`` and
  ``stream_options``, the layout's marker sites (tools, messages, their parts and calls) for
  markers, skipping the values it does not enter with the standard library's C scanner.
Hand-written because no JSON library reports positions; both ways share one cutting rule.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Final

import orjson

from cachegate.core.sites import MARKER_KEY

_MODEL: Final = "model"
_STREAM_OPTIONS: Final = "stream_options"
_INCLUDE_USAGE: Final = "include_usage"
_MARKERS: Final = frozenset({MARKER_KEY})
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_SCAN: Final = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner: (value, end) of the value at idx

Member = tuple[str, int, int, int]
"""An object's member: ``(key, key start, value start, value end)``, positions in the text."""

Edit = tuple[int, int, str]
"""Replace ``text[start:end]`` with the string."""


def _spelt(name: str) -> str:
    """``name``'s characters as a JSON string may spell them: each itself or its ``\\u`` escape."""
    return "".join(f"(?:{re.escape(char)}|\\\\u{_hex(ord(char))})" for char in name)


def _hex(code: int) -> str:
    return "".join(f"[{digit}{digit.upper()}]" if digit.isalpha() else digit for digit in f"{code:04x}")


# A key is a JSON string followed by a colon. The patterns start with the quote, so that the regex
# engine skips from quote to quote; that no backslash precedes the quote (a quote inside a string
# always has one) is checked by ``_keys``.
_KEY_END: Final = '"[ \\t\\n\\r]*:'
_PATTERNS: Final = {name: re.compile(f'"{_spelt(name)}{_KEY_END}') for name in (MARKER_KEY, _MODEL, _STREAM_OPTIONS)}
# The \u spellings of "_" and of the lower-case letters, all that the names above are made of. A text
# without any spells its keys literally, and they are found by plain search (several times faster).
_LETTER_ESCAPES: Final = ("\\u005", "\\u006", "\\u007")


def _keys(text: str, name: str, spelt_plainly: bool) -> list[tuple[int, int]]:
    """Where the keys called ``name`` are: ``(quote, just after the colon)`` of each."""
    if not spelt_plainly:
        found = _PATTERNS[name].finditer(text)
        return [(key.start(), key.end()) for key in found if text[key.start() - 1] != "\\"]
    keys: list[tuple[int, int]] = []
    quoted = f'"{name}"'
    start = text.find(quoted)
    while start >= 0:
        after = _skip(text, start + len(quoted))
        if text[after] == ":" and text[start - 1] != "\\":
            keys.append((start, after + 1))
        start = text.find(quoted, start + 1)
    return keys


def splice(
    raw: bytes,
    markers: int,
    model: str | None,
    include_usage: bool,
    *,
    removed: Collection[str] = (),
    set_strings: Mapping[str, str] | None = None,
) -> bytes:
    """``raw`` (a JSON object that parsed, whose markers numbered ``markers``) with its markers removed,
    its top-level ``model`` set to ``model`` (None: kept), with ``include_usage``,
    ``stream_options.include_usage`` set to true, the top-level members named in ``removed`` cut,
    and each top-level member of ``set_strings`` set to its string (replaced, or added first)."""
    if not markers and model is None and not include_usage and not removed and not set_strings:
        return raw  # not one marker key at a marker site: a marker, even a null or duplicate one, is counted
    text = _Text(raw.decode())
    edits = text.marker_edits(markers) if markers else []
    if model is not None:
        edits.extend(text.model_edits(model))
    if include_usage:
        edits.extend(text.usage_edits())
    if removed:
        edits.extend(_removals(text.text, text.top, frozenset(removed)))
    for name, value in (set_strings or {}).items():
        edits.extend(text.set_edits(name, _json(value)))
    return _apply(text.text, edits).encode()


class _Text:
    """The client's text, and where its keys are, found the cheapest way that is sure (module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.start = _skip(text, 0)
        self._plainly = "\\u00" not in text or not any(escape in text for escape in _LETTER_ESCAPES)
        self._top: list[Member] | None = None

    @property
    def top(self) -> list[Member]:
        """The top-level object's members (one pass of the C scanner over the whole text)."""
        if self._top is None:
            self._top = _members(self.text, self.start)
        return self._top

    def marker_edits(self, markers: int) -> list[Edit]:
        text = self.text
        keys = _keys(text, MARKER_KEY, self._plainly)
        if len(keys) == markers:  # every cache_control key is a marker: none elsewhere, no duplicate
            return [_cut(text, start, _value_end(text, _skip(text, end))) for start, end in keys]
        edits = _removals(text, self.top, _MARKERS)
        for key, _, value_start, _ in self.top:
            if key == "tools":
                edits.extend(_element_markers(text, value_start))
            elif key == "messages" and text[value_start] == "[":
                for element_start, _ in _elements(text, value_start):
                    if text[element_start] != "{":
                        continue
                    message = _members(text, element_start)
                    edits.extend(_removals(text, message, _MARKERS))
                    for name, _, inner_start, _ in message:
                        if name in ("content", "tool_calls"):
                            edits.extend(_element_markers(text, inner_start))
        return edits

    def model_edits(self, model: str) -> list[Edit]:
        keys = _keys(self.text, _MODEL, self._plainly)
        if len(keys) == 1:  # the top level has one: this is it
            value_start = _skip(self.text, keys[0][1])
            return [(value_start, _value_end(self.text, value_start), _json(model))]
        return [(start, end, _json(model)) for key, _, start, end in self.top if key == _MODEL]

    def set_edits(self, name: str, value: str) -> list[Edit]:
        """Set each top-level ``name`` to the JSON ``value``, or add it first when there is none."""
        found = [(start, end, value) for key, _, start, end in self.top if key == name]
        return found or [_opening(self.text, self.start, f"{_json(name)}:{value}")]

    def usage_edits(self) -> list[Edit]:
        """Set ``stream_options.include_usage`` to true: in each ``stream_options`` object, or a new one."""
        if not _keys(self.text, _STREAM_OPTIONS, self._plainly):
            return [_opening(self.text, self.start, f'"{_STREAM_OPTIONS}":{{"{_INCLUDE_USAGE}":true}}')]
        return _usage_edits(self.text, self.start, self.top)


def _usage_edits(text: str, start: int, top: list[Member]) -> list[Edit]:
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
            yield from _removals(text, _members(text, element_start), _MARKERS)


def _removals(text: str, members: list[Member], names: frozenset[str]) -> list[Edit]:
    """Cut every member called one of ``names``; a run of them goes with the comma that joined it to
    the rest (all names at once: runs of different names next to each other are one run)."""
    edits: list[Edit] = []
    count = len(members)
    index = 0
    while index < count:
        if members[index][0] not in names:
            index += 1
            continue
        last = index
        while last + 1 < count and members[last + 1][0] in names:
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
