"""Chat chunks as Anthropic stream events (SPEC §9): the events, and a round trip that loses nothing."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cachegate.core.anthropic.response import translate_response
from cachegate.core.anthropic.stream import AnthropicStream

from ..bodies import PROPERTY

START_USAGE = {"input_tokens": 5, "output_tokens": 0}
FINAL_USAGE = {"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": 0}
_EVENT = TypeAdapter(RawMessageStreamEvent)


def parse(frames: list[bytes]) -> list[dict[str, Any]]:
    """SSE frames as event payloads; each frame is one event whose name is its payload's type."""
    events = []
    for frame in frames:
        for raw in frame.split(b"\n\n")[:-1]:
            name_line, data_line = raw.split(b"\n")
            payload = orjson.loads(data_line.removeprefix(b"data: "))
            assert name_line == b"event: " + payload["type"].encode()
            events.append(payload)
    return events


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message a client builds from the events, checking the protocol as it goes."""
    assert events[0]["type"] == "message_start" and events[1]["type"] == "ping" and events[-1]["type"] == "message_stop"
    message = dict(events[0]["message"])
    message["content"] = []
    open_block: int | None = None
    partial_json: dict[int, str] = {}
    for event in events[2:-1]:
        _EVENT.validate_python(event)  # the anthropic SDK's own event types
        kind = event["type"]
        if kind == "content_block_start":
            assert open_block is None and event["index"] == len(message["content"])
            open_block = event["index"]
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            assert event["index"] == open_block
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                partial_json[event["index"]] = partial_json.get(event["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
            if message["content"][event["index"]]["type"] == "tool_use":
                text = partial_json.get(event["index"], "")
                message["content"][event["index"]]["input"] = json.loads(text) if text else {}
        else:
            assert kind == "message_delta" and open_block is None
            message.update(event["delta"])
            message["usage"] = event["usage"]
    return message


def run(stream: AnthropicStream, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frames = [stream.start("msg_1", "qwen", START_USAGE)]
    for chunk in chunks:
        frames.extend(stream.on_chunk(chunk))
    frames.extend(stream.finish(FINAL_USAGE))
    return parse(frames)


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, **choice}]}


USAGE_FRAME = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}


class TestEvents:
    def test_text(self) -> None:
        events = run(
            AnthropicStream(),
            [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}, "stop")],
        )
        assert events == [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "qwen",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": START_USAGE,
                },
            },
            {"type": "ping"},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": FINAL_USAGE,
            },
            {"type": "message_stop"},
        ]

    def test_thinking_then_a_tool_call(self) -> None:
        chunks = [
            chunk({"reasoning": "hmm"}),
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
            chunk({}, "tool_calls"),
            USAGE_FRAME,
        ]
        events = run(AnthropicStream(), chunks)
        assert [(event["type"], event.get("delta", {}).get("type")) for event in events[2:-2]] == [
            ("content_block_start", None),
            ("content_block_delta", "thinking_delta"),
            ("content_block_delta", "signature_delta"),
            ("content_block_stop", None),
            ("content_block_start", None),
            ("content_block_delta", "input_json_delta"),
            ("content_block_delta", "input_json_delta"),
            ("content_block_stop", None),
        ]
        assert events[6]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
        assert events[-2]["delta"]["stop_reason"] == "tool_use"

    def test_the_usage_frame_makes_no_events(self) -> None:
        stream = AnthropicStream()
        stream.start("msg_1", "m", START_USAGE)
        assert stream.on_chunk(USAGE_FRAME) == []
        assert stream.on_chunk({"choices": [{"delta": None}]}) == []

    def test_a_stop_sequence(self) -> None:
        events = run(AnthropicStream(stop_sequences=["END"]), [chunk({"content": "a"}, "stop", stop_reason="END")])
        assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}

    def test_an_empty_stream_has_one_empty_text_block(self) -> None:
        message = accumulate(run(AnthropicStream(), [chunk({}, "length")]))
        assert message["content"] == [{"type": "text", "text": ""}]
        assert message["stop_reason"] == "max_tokens"

    def test_error_event(self) -> None:
        frame = AnthropicStream().error_event("overloaded_error", "Overloaded")
        assert frame == (
            b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
        )


_texts = st.text(max_size=12)
_arguments = st.dictionaries(
    st.text(max_size=4), st.none() | st.booleans() | st.integers() | st.text(max_size=6), max_size=3
)
_calls = st.lists(st.tuples(st.none() | st.just("call").map(str), _arguments), max_size=3)


@st.composite
def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at random places (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]


@given(
    reasoning=_texts,
    text=_texts,
    calls=_calls,
    finish_reason=st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]),
    matched_stop=st.none() | st.sampled_from(["END", "OTHER"]),
    reasoning_field=st.sampled_from(["reasoning", "reasoning_content"]),
    data=st.data(),
)
@PROPERTY
def test_a_stream_round_trip_loses_nothing(
    reasoning: str,
    text: str,
    calls: list[tuple[str | None, dict[str, Any]]],
    finish_reason: str | None,
    matched_stop: str | None,
    reasoning_field: str,
    data: st.DataObject,
) -> None:
    """Accumulating the events gives the content and stop reason of the whole completion's translation."""
    tool_calls = [
        {
            "id": None if call_id is None else f"call_{k}",
            "type": "function",
            "function": {"name": f"f{k}", "arguments": json.dumps(arguments)},
        }
        for k, (call_id, arguments) in enumerate(calls)
    ]
    message = {"role": "assistant", reasoning_field: reasoning, "content": text or None, "tool_calls": tool_calls}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, "stop_reason": matched_stop}
    whole = translate_response(
        {"id": "chatcmpl-7", "choices": [choice]}, model="qwen", stop_sequences=["END"], usage=FINAL_USAGE
    )
    Message.model_validate(whole)

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({reasoning_field: piece}) for piece in data.draw(_pieces(reasoning))]
    chunks += [chunk({"content": piece}) for piece in data.draw(_pieces(text))]
    for k, call in enumerate(tool_calls):
        first, *rest = data.draw(_pieces(call["function"]["arguments"]))
        head = {"index": k, "id": call["id"], "type": "function", "function": {"name": f"f{k}", "arguments": first}}
        chunks.append(chunk({"tool_calls": [head]}))
        chunks += [chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]}) for piece in rest]
    chunks += [chunk({}, finish_reason, stop_reason=matched_stop), USAGE_FRAME]

    stream = AnthropicStream(stop_sequences=["END"])
    frames = [stream.start(whole["id"], "qwen", START_USAGE)]
    for each in chunks:
        frames.extend(stream.on_chunk(each))
    frames.extend(stream.finish(FINAL_USAGE))
    streamed = accumulate(parse(frames))

    assert streamed["content"] == whole["content"]
    assert (streamed["stop_reason"], streamed["stop_sequence"]) == (whole["stop_reason"], whole["stop_sequence"])
    assert streamed["usage"] == FINAL_USAGE
    Message.model_validate(streamed)
