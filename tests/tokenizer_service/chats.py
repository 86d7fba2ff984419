"""Chat requests the service and the remote counter are tested with."""

from __future__ import annotations

import copy
from typing import Any

from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy, strip_markers
from cachegate.core.types import ParsedPrompt, TtlTier

ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
FIVE_MINUTES = {"type": "ephemeral"}

LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}

# Tools, multi-part content and two breakpoints: the system prompt (1h) and the first user part (5m).
TWO_BREAKPOINTS: dict[str, Any] = {
    "model": "qwen3",
    "tools": [LOOKUP_TOOL],
    "messages": [
        {
            "role": "system",
            "content": [{"type": "text", "text": "You answer in one short sentence.", "cache_control": ONE_HOUR}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here is a glossary: cache, prefix, token.", "cache_control": FIVE_MINUTES},
                {"type": "text", "text": "What does 'cache' mean?"},
            ],
        },
    ],
}

# Automatic caching (top-level marker) over a conversation with a tool call and its result.
TOOL_ROUND_TRIP: dict[str, Any] = {
    "model": "qwen3",
    "tools": [LOOKUP_TOOL],
    "cache_control": FIVE_MINUTES,
    "messages": [
        {"role": "system", "content": "Use the tools when unsure."},
        {"role": "user", "content": "Define 'prefix'."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"word": "prefix"}'},
                    "cache_control": ONE_HOUR,
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "prefix: what comes before."},
    ],
}

# String content, Unicode, a message-level marker.
PLAIN_CONVERSATION: dict[str, Any] = {
    "model": "qwen3",
    "messages": [
        {"role": "system", "content": "Übung macht den Meister. 第一部分 🙂", "cache_control": ONE_HOUR},
        {"role": "user", "content": "Summarise that."},
        {"role": "assistant", "content": "Practice makes perfect."},
        {"role": "user", "content": "Thanks!", "cache_control": FIVE_MINUTES},
    ],
}

ALL_TTLS = TtlPolicy(frozenset(TtlTier))


def gateway_view(body: dict[str, Any]) -> tuple[ParsedPrompt, dict[str, Any]]:
    """What a gateway counts with: its parse of the client's request, and the forwarded body (no markers)."""
    forwarded = copy.deepcopy(body)
    strip_markers(forwarded)
    return parse_prompt(body, ALL_TTLS), forwarded
