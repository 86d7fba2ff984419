"""Chat-completion chunks as Anthropic's stream events (SPEC §9).

One ``AnthropicStream`` per response: ``start`` once (``message_start``, ``ping``), ``on_chunk``
for every parsed chat chunk, ``finish`` once with the exact usage (the closing ``message_delta``
always carries it). Content blocks open in the order their deltas arrive and are numbered from
0: reasoning becomes a ``thinking`` block, text a ``text`` block, each tool call (by its
``index``) a ``tool_use`` block whose arguments stream as ``input_json_delta``. A delta of
another kind closes the open block. vLLM streams tool calls one after another; a fragment for a
call whose block was already closed is still sent to that block's index, so nothing is lost.
A stream with no content at all gets one empty text block, as ``translate_response`` gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from cachegate.core.anthropic.errors import error_body
from cachegate.core.anthropic.response import reasoning_of, stop_reason, tool_use_id

_BlockKey = tuple[str, int | None]  # ("text" | "thinking" | "tool_use", the tool call's index)


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """``event: <type>`` and the payload as its data, as Anthropic frames every event."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicStream:
    """A stateful translator of one chat stream into Anthropic's events."""

    def __init__(self, *, stop_sequences: Sequence[str] = ()) -> None:
        self._stop_sequences = tuple(stop_sequences)
        self._message_id = ""
        self._open: _BlockKey | None = None
        self._blocks = 0  # blocks opened so far; the next one's index
        self._tool_blocks: dict[int, int] = {}  # tool call index → its block's index
        self._finish_reason: object = None
        self._matched_stop: object = None

    def start(
        self, message_id: str, model: str, usage: Mapping[str, Any], extra: Mapping[str, Any] | None = None
    ) -> bytes:
        """``message_start`` with the message's skeleton, ``usage`` and ``extra`` fields, then a ``ping``."""
        self._message_id = message_id
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": dict(usage),
            **(extra or {}),
        }
        return sse_event({"type": "message_start", "message": message}) + sse_event({"type": "ping"})

    def on_chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        """The events for one chat chunk; none for the usage frame (``choices: []``)."""
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return []
        choice = choices[0]
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
        if choice.get("stop_reason") is not None:
            self._matched_stop = choice["stop_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            return []
        events: list[bytes] = []
        reasoning = reasoning_of(delta)
        if reasoning:
            index = self._enter(("thinking", None), {"type": "thinking", "thinking": "", "signature": ""}, events)
            events.append(_delta(index, {"type": "thinking_delta", "thinking": reasoning}))
        text = delta.get("content")
        if isinstance(text, str) and text:
            index = self._enter(("text", None), {"type": "text", "text": ""}, events)
            events.append(_delta(index, {"type": "text_delta", "text": text}))
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, Mapping):
                self._tool_call(call, position, events)
        return events

    def finish(self, usage: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> list[bytes]:
        """Close the open block, then ``message_delta`` with the stop reason, ``usage`` and ``extra``
        fields, and ``message_stop``."""
        events: list[bytes] = []
        if self._blocks == 0:
            self._enter(("text", None), {"type": "text", "text": ""}, events)
        self._close(events)
        reason, sequence = stop_reason(
            self._finish_reason, self._matched_stop, self._stop_sequences, has_tool_use=bool(self._tool_blocks)
        )
        events.append(
            sse_event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": dict(usage),
                    **(extra or {}),
                }
            )
        )
        events.append(sse_event({"type": "message_stop"}))
        return events

    def error_event(self, type_: str, message: str) -> bytes:
        """An ``error`` event: how a stream that has begun reports a failure."""
        return sse_event(error_body(type_, message))

    def _tool_call(self, call: Mapping[str, Any], position: int, events: list[bytes]) -> None:
        call_index = call.get("index")
        if not isinstance(call_index, int) or isinstance(call_index, bool):
            call_index = position
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        block = self._tool_blocks.get(call_index)
        if block is None:
            name = function.get("name")
            start = {
                "type": "tool_use",
                "id": tool_use_id(call.get("id"), self._message_id, len(self._tool_blocks)),
                "name": name if isinstance(name, str) else "",
                "input": {},
            }
            block = self._tool_blocks[call_index] = self._enter(("tool_use", call_index), start, events)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(_delta(block, {"type": "input_json_delta", "partial_json": arguments}))

    def _enter(self, key: _BlockKey, content_block: dict[str, Any], events: list[bytes]) -> int:
        """The index of the block ``key``, opening it (and closing the open one) unless it is open."""
        if self._open == key:
            return self._blocks - 1
        self._close(events)
        index = self._blocks
        self._blocks += 1
        self._open = key
        events.append(sse_event({"type": "content_block_start", "index": index, "content_block": content_block}))
        return index

    def _close(self, events: list[bytes]) -> None:
        if self._open is None:
            return
        index = self._blocks - 1
        if self._open[0] == "thinking":
            events.append(_delta(index, {"type": "signature_delta", "signature": ""}))
        events.append(sse_event({"type": "content_block_stop", "index": index}))
        self._open = None


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse_event({"type": "content_block_delta", "index": index, "delta": delta})
