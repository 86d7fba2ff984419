"""The forwarded body is the client's text with only markers cut and ``model`` (or usage) set (SPEC §3.4)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.core.json_splice import splice
from cachegate.core.markers import strip_markers

from forwarded import Obj, exact, expected_forward


def forward(raw: bytes, model: str | None = "upstream", include_usage: bool = False) -> bytes:
    """What the chat flow sends: the markers counted on the parsed body, as the gateway counts them."""
    return splice(raw, strip_markers(orjson.loads(raw)), model, include_usage)


def test_an_unchanged_body_is_the_same_bytes() -> None:
    raw = b'{ "messages" : [ ] ,"model":"m"}'
    assert forward(raw, None) is raw


def test_big_integers_key_order_and_spelling_survive_a_rename() -> None:
    raw = (
        b'{"seed": 123456789012345678901234567890, "model": "alias", "z": 1.50, "a": "\\u00e9",'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",'
        b' "cache_control": {"type": "ephemeral"}}]}]}'
    )
    assert forward(raw) == (
        b'{"seed": 123456789012345678901234567890, "model": "upstream", "z": 1.50, "a": "\\u00e9",'
        b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'
    )


def test_a_schema_property_named_cache_control_survives_beside_a_marker() -> None:
    raw = (
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        b'"properties":{"cache_control":{"type":"string"}}}},"cache_control":{"type":"ephemeral"}}],"messages":[]}'
    )
    assert forward(raw, None) == (
        b'{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object",'
        b'"properties":{"cache_control":{"type":"string"}}}}}],"messages":[]}'
    )


def test_escaped_and_duplicate_marker_keys_are_all_cut() -> None:
    raw = (
        b'{"model":"m","messages":[{"role":"user","content":"x","cache\\u005Fcontrol":null,'
        b'"cache_control":{"type":"ephemeral"}}],"cache_control":{"type":"ephemeral","ttl":"1h"}}'
    )
    assert forward(raw, None) == b'{"model":"m","messages":[{"role":"user","content":"x"}]}'


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        (b'{"model":"m","messages":[]}', b'{"stream_options":{"include_usage":true},"model":"m","messages":[]}'),
        (
            b'{"model":"m","stream_options":{"include_usage":false},"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true},"messages":[]}',
        ),
        (
            b'{"model":"m","stream_options":{ },"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true },"messages":[]}',
        ),
        (
            b'{"model":"m","stream_options":null,"messages":[]}',
            b'{"model":"m","stream_options":{"include_usage":true},"messages":[]}',
        ),
    ],
)
def test_usage_is_forced_on_in_place(raw: bytes, forwarded: bytes) -> None:
    assert forward(raw, None, include_usage=True) == forwarded


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


def values(depth: int = 3) -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.lists(st.tuples(KEYS, inner), max_size=3).map(Obj),
        ),
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
                *draw(st.lists(st.tuples(KEYS, values()), max_size=2)),
            ]
        )
    )


@st.composite
def message(draw: st.DrawFn) -> Obj:
    members: list[tuple[str, Any]] = [("role", "user")]
    content = draw(st.one_of(st.text(max_size=6), st.lists(part(), max_size=3)))
    members.append(("content", content))
    if draw(st.booleans()):
        members.append(("tool_calls", draw(st.lists(marked([("id", "c"), ("function", draw(values()))]), max_size=2))))
    members.extend(draw(st.lists(st.tuples(KEYS, values()), max_size=2)))
    return draw(marked(members))


@st.composite
def body(draw: st.DrawFn) -> Obj:
    members: list[tuple[str, Any]] = [("model", "alias"), ("messages", draw(st.lists(message(), max_size=3)))]
    if draw(st.booleans()):
        tool = marked([("type", "function"), ("function", Obj([("name", "f"), ("parameters", draw(values()))]))])
        members.append(("tools", draw(st.lists(tool, max_size=2))))
    if draw(st.booleans()):
        members.append(("stream_options", draw(st.one_of(st.none(), values()))))
    members.extend(draw(st.lists(st.tuples(KEYS.filter(lambda key: key != "model"), values()), max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        members.append(("model", "alias"))  # a duplicate: parsers keep the last
    draw(st.randoms()).shuffle(members)
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


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body(), st.sampled_from(["", " ", "\n  "]), st.booleans(), st.booleans(), st.booleans())
def test_the_forwarded_body_is_the_clients_but_for_markers_model_and_usage(
    value: Obj, space: str, escape: bool, rename: bool, include_usage: bool
) -> None:
    raw = write(value, space, escape).encode()
    parsed = orjson.loads(raw)
    if not isinstance(parsed.get("messages"), list) or not isinstance(parsed.get("model"), str):
        return
    model = "upstream" if rename else None
    assert exact(splice(raw, strip_markers(parsed), model, include_usage)) == expected_forward(
        raw, model, include_usage
    )
