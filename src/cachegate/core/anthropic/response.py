"""A chat completion as an Anthropic message, and Anthropic's usage (SPEC §8, §9).

The rules shared with the stream (``stream.py``) live here once: the message id, the stop
reason, a tool call's id and input. Decisions where the SPEC is silent:
- Content is ordered thinking, text, tool uses. The text block is left out when it is empty,
  unless the message would otherwise have no content at all (Anthropic's clients expect one).
- Tool-call arguments that are not a JSON object (invalid JSON, an array) give ``input: {}``,
  as vLLM's templates read them; a stream passes the fragments on as the model wrote them.
- ``finish_reason: "stop"`` with tool calls is ``tool_use`` (some vLLM tool parsers say
  ``stop``; agents run tools on ``tool_use``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from cachegate.core.types import CacheStats
from cachegate.core.usage import cap_stats

_COMPLETION_PREFIX: Final = "chatcmpl-"
_STOP_REASONS: Final = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id(completion_id: object) -> str:
    """``msg_`` and the completion's id (a random one when the upstream gave none)."""
    if isinstance(completion_id, str) and completion_id:
        return "msg_" + completion_id.removeprefix(_COMPLETION_PREFIX)
    return "msg_" + uuid.uuid4().hex


def tool_use_id(call_id: object, message: str, position: int) -> str:
    """The call's own id, else one derived from the message id and the call's position."""
    if isinstance(call_id, str) and call_id:
        return call_id
    return f"toolu_{message.removeprefix('msg_')}_{position}"


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's ``arguments`` as ``tool_use.input``: the JSON object, else ``{}``."""
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return dict(arguments) if isinstance(arguments, Mapping) else {}


def stop_reason(
    finish_reason: object, matched_stop: object, stop_sequences: Sequence[str], *, has_tool_use: bool
) -> tuple[str, str | None]:
    """Anthropic's ``(stop_reason, stop_sequence)`` for a chat ``finish_reason``.

    ``matched_stop`` is vLLM's ``choices[0].stop_reason``: the stop string that ended the
    completion, when one did.
    """
    if finish_reason == "stop" or finish_reason is None:
        if has_tool_use:
            return "tool_use", None
        if isinstance(matched_stop, str) and matched_stop in stop_sequences:
            return "stop_sequence", matched_stop
        return "end_turn", None
    return _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn", None


def reasoning_of(message: Mapping[str, Any]) -> str:
    """The reasoning text of a chat message or delta (vLLM's ``reasoning``, older ``reasoning_content``)."""
    for name in ("reasoning", "reasoning_content"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def anthropic_usage(
    prompt_tokens: int, completion_tokens: int, stats: CacheStats, *, degraded: bool = False, with_24h: bool = False
) -> dict[str, Any]:
    """Anthropic's usage for a request's counts and cache split (SPEC §9).

    ``input_tokens`` is what was neither read nor written. The split is capped to the prompt
    (§6.6) once more, which changes nothing for a split ``cap_stats`` already capped. The 24h
    tier is shown when asked for, or when it holds tokens, so the split always sums to
    ``cache_creation_input_tokens``.
    """
    capped = cap_stats(stats, prompt_tokens)
    creation = {
        "ephemeral_5m_input_tokens": capped.creation_5m,
        "ephemeral_1h_input_tokens": capped.creation_1h,
    }
    if with_24h or capped.creation_24h:
        creation["ephemeral_24h_input_tokens"] = capped.creation_24h
    usage: dict[str, Any] = {
        "input_tokens": max(prompt_tokens - capped.read - capped.creation, 0),
        "output_tokens": completion_tokens,
        "cache_read_input_tokens": capped.read,
        "cache_creation_input_tokens": capped.creation,
        "cache_creation": creation,
    }
    if degraded:
        usage["cache_degraded"] = True
    return usage


def translate_response(
    completion: Mapping[str, Any], *, model: str, stop_sequences: Sequence[str], usage: Mapping[str, Any]
) -> dict[str, Any]:
    """The Anthropic message for a chat completion's first choice, carrying ``usage`` as given."""
    identifier = message_id(completion.get("id"))
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    if not isinstance(message, Mapping):
        message = {}
    content: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    text = text if isinstance(text, str) else ""
    calls = message.get("tool_calls")
    calls = [call for call in calls if isinstance(call, Mapping)] if isinstance(calls, list) else []
    if text or (not content and not calls):
        content.append({"type": "text", "text": text})
    for position, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), identifier, position),
                "name": name if isinstance(name, str) else "",
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences, has_tool_use=bool(calls)
    )
    return {
        "id": identifier,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": dict(usage),
    }
