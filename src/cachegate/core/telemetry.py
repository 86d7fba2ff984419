"""Engine telemetry that reveals prefix-cache state, and the request flags that ask for it (SPEC §12).

llama.cpp adds a ``timings`` object to its answers (``cache_n``: prompt tokens it found in its KV
cache; ``prompt_n``/``prompt_ms``: what it had to compute), on every stream chunk when the request
sets ``timings_per_token``, and a ``prompt_progress`` object (with its own ``cache`` count) when it
sets ``return_progress``. The engine's cache is shared by every tenant, so these numbers tell a
tenant whether another one sent the same prompt: the gateway never forwards the flags and removes
the objects from every response it relays, whatever the route.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

TELEMETRY_FIELDS: Final = ("timings", "prompt_progress")
"""Top-level fields of a response, a stream chunk, or a Responses event's ``response`` object."""

TELEMETRY_REQUEST_FLAGS: Final = ("timings_per_token", "return_progress")
"""Request fields that ask an engine for more telemetry; removed before a body goes upstream."""

_MAY_CARRY: Final = re.compile(rb'"(?:timings|prompt_progress)"\s*:')


def may_carry_telemetry(data: bytes) -> bool:
    """Whether ``data`` may hold a telemetry object: one scan, so clean bodies are never parsed."""
    return _MAY_CARRY.search(data) is not None


def strip_telemetry_flags(body: dict[str, Any]) -> list[str]:
    """Remove the flags that ask for telemetry from a request body, in place; the names removed."""
    removed = [name for name in TELEMETRY_REQUEST_FLAGS if name in body]
    for name in removed:
        del body[name]
    return removed


def scrub_telemetry(payload: Any) -> bool:
    """Remove telemetry from a parsed response or event, in place; whether anything was removed.

    Looks at the payload itself and at a Responses event's ``response`` object, where an engine
    would put per-response fields.
    """
    if not isinstance(payload, dict):
        return False
    removed = False
    for holder in (payload, payload.get("response")):
        if isinstance(holder, dict):
            for name in TELEMETRY_FIELDS:
                if name in holder:
                    del holder[name]
                    removed = True
    return removed


def without_telemetry(data: bytes) -> bytes:
    """A JSON body with its telemetry removed; the same bytes when it has none (or is not a JSON object)."""
    if not may_carry_telemetry(data):
        return data
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    return orjson.dumps(payload) if scrub_telemetry(payload) else data
