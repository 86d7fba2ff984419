"""Benchmark: what preparing a chat body for its upstream costs, before and after the forwarded body
became the client's text spliced (issue 10), on the same bodies in one run.

- before: parse, strip the markers, rename ``model``, serialise again (orjson).
- after: parse, bound the nesting, check the shape, strip the markers, rename,
  splice the client's text (core/json_splice.py). ``model``: a tool schema has a property named
  ``model``, so the splice reads the top level to find the one to rename; ``walk``: a property
  named ``cache_control``, so it walks the layout for the markers.

Bodies: ``bench`` is bench.py's (~8.5 KB, one 1h marker); ``agent`` is an agent's (40 tools with
nested JSON schemas, 30 turns, three markers, ~90 KB).

    .venv/bin/python bench/forwarding.py
"""

from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from bench import chat_body
from cachegate.core.chat_shape import DEFAULT_LIMITS, check_chat_shape, check_depth
from cachegate.core.json_splice import splice
from cachegate.core.markers import strip_markers

MARK = {"type": "ephemeral"}


def agent_body(schema_property: str | None) -> bytes:
    def schema(i: int) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "path": {"type": "string", "description": f"The file {i} reads."},
            "options": {
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "minimum": 1},
                    "filters": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"glob": {"type": "string"}}},
                    },
                },
            },
        }
        if schema_property is not None and i == 7:
            properties[schema_property] = {"type": "string"}
        return {"type": "object", "properties": properties, "required": ["path"]}

    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {"name": f"tool_{i}", "description": "Does a thing. " * 20, "parameters": schema(i)},
        }
        for i in range(40)
    ]
    tools[-1]["cache_control"] = MARK
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": "Be an agent. " * 200, "cache_control": MARK}]}
    ]
    for turn in range(15):
        call = {
            "id": f"c{turn}",
            "type": "function",
            "function": {"name": "tool_1", "arguments": json.dumps({"path": f"src/{turn}.py"})},
        }
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": "def f():\n    return 1\n" * 20})
    messages[-1]["cache_control"] = MARK
    return json.dumps({"model": "alias", "messages": messages, "tools": tools, "max_tokens": 64}).encode()


def before(raw: bytes) -> bytes:
    body = orjson.loads(raw)
    strip_markers(body)
    body["model"] = "upstream"
    return orjson.dumps(body)


def after(raw: bytes) -> bytes:
    body = orjson.loads(raw)
    check_depth(body, DEFAULT_LIMITS.max_depth)
    check_chat_shape(body, DEFAULT_LIMITS)
    removed = strip_markers(body)
    body["model"] = "upstream"
    return splice(raw, removed, "upstream", False)


def microseconds(function: Callable[[bytes], bytes], raw: bytes) -> float:
    timer = timeit.Timer(lambda: function(raw), timer=time.process_time)  # CPU time: the machine may be shared
    number, _ = timer.autorange()
    return min(timer.repeat(5, number)) / number * 1e6


def main() -> None:
    bodies = {
        "bench": chat_body("alias", stream=False, marked=True),
        "agent": agent_body(None),
        "agent, model": agent_body("model"),
        "agent, walk": agent_body("cache_control"),
    }
    print(f"{'body':<14}{'bytes':>8} | {'before µs':>10}{'after µs':>10}{'added µs':>10}")
    for name, raw in bodies.items():
        old, new = microseconds(before, raw), microseconds(after, raw)
        print(f"{name:<14}{len(raw):>8} | {old:>10.1f}{new:>10.1f}{new - old:>10.1f}")


if __name__ == "__main__":
    main()
