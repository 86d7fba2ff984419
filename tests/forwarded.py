"""What a client's chat body must look like once forwarded (SPEC §2.4, §3.4), told independently of
the gateway: the body as exact JSON values (objects as their members in order, duplicates kept;
numbers as written), the markers at §3.1's sites removed, ``model`` replaced, usage forced on."""

from __future__ import annotations

import json
from typing import Any

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
