"""What a client's chat body must look like once forwarded (SPEC §2.4, §3.4), told independently of
the gateway: the body as exact JSON values (objects as their members in order, duplicates kept;
numbers as written), the markers at §3.1's sites removed, ``model`` replaced, usage forced on."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

MARKER = "cache_control"


class Obj(tuple):  # type: ignore[type-arg]
    """A JSON object as the tuple of its ``(key, value)`` members, in order, duplicates kept."""


def exact(raw: bytes) -> Any:
    """``raw`` parsed without losing anything a comparison should see: order, duplicates, numbers' text."""
    return json.loads(
        raw,
        object_pairs_hook=Obj,
        parse_int=lambda text: ("int", text),
        parse_float=lambda text: ("float", text),
        parse_constant=lambda text: ("constant", text),
    )


def expected_forward(raw: bytes, model: str | None, include_usage: bool = False) -> Any:
    """The exact JSON value the upstream must receive for the client's ``raw``."""
    body = exact(raw)
    members = []
    for key, value in body:
        if key == MARKER:
            continue
        if key == "model" and model is not None:
            value = model
        elif key == "tools":
            value = _unmarked_elements(value)
        elif key == "messages" and isinstance(value, list):
            value = [_message(message) for message in value]
        members.append((key, value))
    if include_usage:
        members = _with_usage(members)
    return Obj(members)


def _with_usage(members: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``stream_options.include_usage`` true: set in each ``stream_options`` object, else a new one first."""
    if not any(key == "stream_options" for key, _ in members):
        return [("stream_options", Obj([("include_usage", True)])), *members]
    out = []
    for key, value in members:
        if key == "stream_options":
            if not isinstance(value, Obj):
                value = Obj([("include_usage", True)])
            elif any(name == "include_usage" for name, _ in value):
                value = Obj([(name, True if name == "include_usage" else inner) for name, inner in value])
            else:
                value = Obj([("include_usage", True), *value])
        out.append((key, value))
    return out


def _message(message: Any) -> Any:
    if not isinstance(message, Obj):
        return message
    return Obj(
        (key, _unmarked_elements(value) if key in ("content", "tool_calls") else value)
        for key, value in message
        if key != MARKER
    )


def _unmarked_elements(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    return [_unmarked(element) for element in value]


def _unmarked(value: Any) -> Any:
    return Obj(member for member in value if member[0] != MARKER) if isinstance(value, Obj) else value


# Bodies as exact JSON values (``Obj`` members, duplicates allowed), written out with the liberties
# clients take: any whitespace, escaped keys and text, numbers no parser keeps as written.
KEYS = st.sampled_from(["role", "content", "type", "text", "cache_control", "model", "name", "x", "properties"])
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: ("int", str(n))),
    st.sampled_from([("float", "1.50"), ("float", "-0.0"), ("float", "1e3"), ("float", "2E-2")]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=8), st.sampled_from(["cache_control"]))
MARKERS = st.sampled_from(
    [None, Obj([("type", "ephemeral")]), Obj([("type", "ephemeral"), ("ttl", "5m"), ("extra", Obj([("n", 1)]))])]
)


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(st.tuples(KEYS, inner), max_size=3).map(Obj)),
    max_leaves=8,
)


@st.composite
def marked(draw: st.DrawFn, members: list[tuple[str, Any]]) -> Obj:
    """``members`` with a marker (or two, a duplicate) at a random place, sometimes."""
    for _ in range(draw(st.integers(0, 2))):
        members.insert(draw(st.integers(0, len(members))), ("cache_control", draw(MARKERS)))
    return Obj(members)


@st.composite
def part(draw: st.DrawFn) -> Obj:
    return draw(
        marked(
            [
                ("type", "text"),
                ("text", draw(st.text(max_size=6))),
                *draw(st.lists(st.tuples(KEYS, VALUES), max_size=2)),
            ]
        )
    )


@st.composite
def message(draw: st.DrawFn) -> Obj:
    members: list[tuple[str, Any]] = [("role", "user")]
    content = draw(st.one_of(st.text(max_size=6), st.lists(part(), max_size=3)))
    members.append(("content", content))
    if draw(st.booleans()):
        members.append(("tool_calls", draw(st.lists(marked([("id", "c"), ("function", draw(VALUES))]), max_size=2))))
    members.extend(draw(st.lists(st.tuples(KEYS, VALUES), max_size=2)))
    return draw(marked(members))


@st.composite
def exact_bodies(draw: st.DrawFn) -> Obj:
    """Chat bodies with markers (valid, null, duplicated) where §3.1 puts them, look-alikes elsewhere."""
    members: list[tuple[str, Any]] = [("model", "alias"), ("messages", draw(st.lists(message(), max_size=3)))]
    if draw(st.booleans()):
        tool = marked([("type", "function"), ("function", Obj([("name", "f"), ("parameters", draw(VALUES))]))])
        members.append(("tools", draw(st.lists(tool, max_size=2))))
    if draw(st.booleans()):
        members.append(("stream_options", draw(st.one_of(st.none(), VALUES))))
    members.extend(draw(st.lists(st.tuples(KEYS.filter(lambda key: key != "model"), VALUES), max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        members.append(("model", "alias"))  # a duplicate: parsers keep the last
    members = list(draw(st.permutations(members)))
    return draw(marked(members))


def write(value: Any, space: str, escape: bool) -> str:
    """``value`` as JSON text, ``space`` around every token, keys and text \\u-escaped with ``escape``."""
    if isinstance(value, Obj):
        members = (
            f"{space}{write_key(key, escape)}{space}:{space}{write(inner, space, escape)}" for key, inner in value
        )
        return "{" + ",".join(members) + space + "}"
    if isinstance(value, list):
        return "[" + ",".join(space + write(inner, space, escape) for inner in value) + space + "]"
    if isinstance(value, tuple):
        return value[1]
    return json.dumps(value, ensure_ascii=escape)


def write_key(key: str, escape: bool) -> str:
    return '"' + "".join(f"\\u{ord(char):04x}" for char in key) + '"' if escape else json.dumps(key)
