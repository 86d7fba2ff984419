"""Chat request bodies for the core's tests: hypothesis strategies and small builders."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from cachegate.core.markers import TtlPolicy
from cachegate.core.types import TtlTier

PROPERTY = settings(deadline=None, max_examples=150)
"""No per-example deadline: the machine is shared and timing is never what these tests check."""

ALL_TTLS = TtlPolicy(frozenset(TtlTier))
DEFAULT = TtlPolicy.default_policy()


def marker(ttl: str | None = None) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}


def text(value: str, cache_control: Any = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": value}
    if cache_control is not None:
        part["cache_control"] = cache_control
    return part


def msg(role: str, content: Any, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **fields}


def tool(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
        **fields,
    }


def tool_call(call_id: str, name: str = "lookup", arguments: str = "{}", **fields: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
        **fields,
    }


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **fields}


def marker_holders(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every object that may carry a marker (SPEC §3.1), with its path, in block order."""
    holders: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(body.get("tools", [])):
        holders.append((f"tools[{i}]", item))
    for i, message in enumerate(body["messages"]):
        if isinstance(message.get("content"), list):
            for j, part in enumerate(message["content"]):
                holders.append((f"messages[{i}].content[{j}]", part))
        for k, call in enumerate(message.get("tool_calls") or []):
            holders.append((f"messages[{i}].tool_calls[{k}]", call))
        holders.append((f"messages[{i}]", message))
    return holders


_texts = st.text(max_size=12)
_names = st.text(alphabet="abcdefgh_", min_size=1, max_size=8)

text_parts = st.builds(text, _texts)
image_parts = st.builds(lambda url: {"type": "image_url", "image_url": {"url": url}}, _names)
contents = st.none() | _texts | st.lists(text_parts | image_parts, max_size=3)
tool_calls = st.builds(tool_call, _names, _names, st.sampled_from(["{}", '{"q": 1}']))

messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": contents},
    optional={
        "name": _names,
        "tool_call_id": _names,
        "tool_calls": st.lists(tool_calls, min_size=1, max_size=2),
    },
)

tools = st.builds(
    lambda name, prop: {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {prop: {"type": "string"}}},
        },
    },
    _names,
    st.sampled_from(["query", "cache_control"]),
)

bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(messages, min_size=1, max_size=5)},
    optional={"tools": st.lists(tools, min_size=1, max_size=3)},
)
"""Well-formed chat requests without markers."""

valid_markers = st.sampled_from(
    [marker(), marker("5m"), marker("1h"), marker("24h"), {"type": "ephemeral", "ttl": None}]
)
any_markers = valid_markers | st.sampled_from(
    [
        None,
        True,
        "ephemeral",
        {},
        {"type": "persistent"},
        {"type": 1},
        {"type": "ephemeral", "ttl": "2h"},
        {"type": "ephemeral", "ttl": 5},
    ]
)


@st.composite
def marked_bodies(draw: st.DrawFn, marker_values: st.SearchStrategy[Any] = any_markers) -> dict[str, Any]:
    """A body with markers drawn from ``marker_values`` at random marker sites (top level too)."""
    body = draw(bodies)
    holders = [holder for _, holder in marker_holders(body)] + [body]
    for holder in draw(st.lists(st.sampled_from(holders), max_size=6, unique_by=id)):
        holder["cache_control"] = copy.deepcopy(draw(marker_values))
    return body
