"""Engine telemetry removed from responses, and the flags that ask for it from requests (SPEC §12)."""

from __future__ import annotations

import orjson

from cachegate.core.sse import may_carry_usage_or_error, plain_prefix
from cachegate.core.telemetry import (
    may_carry_telemetry,
    scrub_telemetry,
    strip_telemetry_flags,
    without_telemetry,
)

TIMINGS = {"cache_n": 230, "prompt_n": 12, "prompt_ms": 3.1, "predicted_n": 5, "predicted_ms": 8.0}


def test_a_llama_cpp_chunk_loses_its_timings_and_keeps_the_rest() -> None:
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "timings": TIMINGS}
    assert scrub_telemetry(chunk)
    assert chunk == {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    assert not scrub_telemetry(chunk)  # nothing left to remove


def test_a_responses_event_loses_telemetry_inside_its_response() -> None:
    event = {"type": "response.completed", "response": {"id": "r", "timings": TIMINGS, "prompt_progress": {}}}
    assert scrub_telemetry(event)
    assert event == {"type": "response.completed", "response": {"id": "r"}}


def test_flags_that_ask_for_telemetry_are_stripped_from_requests() -> None:
    body = {"model": "m", "prompt": "x", "timings_per_token": True, "return_progress": True, "cache_prompt": True}
    assert strip_telemetry_flags(body)
    assert body == {"model": "m", "prompt": "x", "cache_prompt": True}
    assert not strip_telemetry_flags(body)


def test_a_body_without_telemetry_is_returned_byte_for_byte() -> None:
    raw = b'{"a":  1,\n "text": "the word \\"timings\\": is only text"}'
    assert not may_carry_telemetry(raw)
    assert without_telemetry(raw) is raw
    with_timings = orjson.dumps({"a": 1, "timings": TIMINGS})
    assert orjson.loads(without_telemetry(with_timings)) == {"a": 1}


def test_stream_frames_with_telemetry_leave_the_fast_path() -> None:
    frame = b"data: " + orjson.dumps({"choices": [], "timings": TIMINGS}) + b"\n\n"
    assert plain_prefix(frame) == 0
    assert may_carry_usage_or_error(frame)
    plain = b'data: {"choices": [{"delta": {"content": "timings"}}]}\n\n'
    assert plain_prefix(plain) == len(plain)
