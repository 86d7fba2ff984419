"""SSE framing and frame editing (SPEC §8 streams)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.sse import (
    DONE_EVENT,
    SseFramer,
    SseFrameTooLarge,
    carries_usage,
    data_event,
    event_json,
    is_done,
    is_error_frame,
    is_usage_frame,
    may_carry_usage_or_error,
    plain_prefix,
    replace_event_json,
)

from .bodies import PROPERTY

DELTA = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":2}}\n\n'
NULL_USAGE = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'


def frame(stream: bytes, *chunks: int) -> tuple[list[bytes], bytes]:
    """Feed ``stream`` cut at the given offsets; the events and what ``flush`` returns."""
    framer = SseFramer()
    events: list[bytes] = []
    start = 0
    for end in [*chunks, len(stream)]:
        events += framer.feed(stream[start:end])
        start = end
    return events, framer.flush()


class TestFramer:
    def test_a_complete_event_passes_through(self) -> None:
        assert frame(DELTA) == ([DELTA], b"")

    def test_several_events_in_one_chunk(self) -> None:
        assert frame(DELTA + USAGE + DONE_EVENT) == ([DELTA, USAGE, DONE_EVENT], b"")

    def test_crlf_separated_events_are_split(self) -> None:
        first, second = b"data: 1\r\n\r\n", b"event: x\r\ndata: 2\r\n\r\n"
        assert frame(first + second) == ([first, second], b"")

    def test_cr_only_framing(self) -> None:
        assert frame(b"data: 1\r\rdata: 2\r\r", 1) == ([b"data: 1\r\r"], b"data: 2\r\r")
        assert frame(b"data: 1\r\rdata: 2\r\rx") == ([b"data: 1\r\r", b"data: 2\r\r"], b"x")

    def test_a_trailing_cr_waits_for_the_next_byte(self) -> None:
        framer = SseFramer()
        assert framer.feed(b"data: 1\r\n\r") == []
        assert framer.feed(b"\n") == [b"data: 1\r\n\r\n"]

    def test_mixed_line_endings(self) -> None:
        assert frame(b"data: 1\n\r\ndata: 2\r\n\n") == ([b"data: 1\n\r\n", b"data: 2\r\n\n"], b"")

    def test_an_event_split_across_chunks_is_reassembled(self) -> None:
        stream = DELTA + USAGE
        for cut in range(len(stream) + 1):
            assert frame(stream, cut) == ([DELTA, USAGE], b"")

    def test_a_crlf_stream_split_at_every_byte_pair(self) -> None:
        stream = b"data: 1\r\n\r\n: keepalive\r\n\r\ndata: 2\r\n\r\n"
        expected = ([b"data: 1\r\n\r\n", b": keepalive\r\n\r\n", b"data: 2\r\n\r\n"], b"")
        for first in range(len(stream) + 1):
            for second in range(first, len(stream) + 1):
                assert frame(stream, first, second) == expected

    def test_trailing_incomplete_data_is_flushed_at_the_end(self) -> None:
        assert frame(DELTA + b'data: {"partial"', 3) == ([DELTA], b'data: {"partial"')

    def test_flush_resets(self) -> None:
        framer = SseFramer()
        framer.feed(b"data: 1")
        assert framer.flush() == b"data: 1"
        assert framer.flush() == b""
        assert framer.feed(DELTA) == [DELTA]

    def test_stray_blank_lines_are_empty_events(self) -> None:
        assert frame(b"\n" + DELTA + b"\n") == ([b"\n", DELTA, b"\n"], b"")
        assert frame(b"\n" + DELTA) == ([b"\n", DELTA], b"")

    def test_an_event_past_the_limit_is_an_error_not_an_end(self) -> None:
        framer = SseFramer(max_event_bytes=64 * 1024)
        with pytest.raises(SseFrameTooLarge):
            framer.feed(b"x" * (64 * 1024 + 1))

    def test_the_limit_holds_for_complete_events_and_pieces_alike(self) -> None:
        event = b"data: " + b"x" * 100 + b"\n\n"
        assert SseFramer(max_event_bytes=len(event)).feed(event) == [event]
        with pytest.raises(SseFrameTooLarge):
            SseFramer(max_event_bytes=len(event) - 1).feed(event)
        framer = SseFramer(max_event_bytes=len(event) - 1)
        framer.feed(event[:50])
        with pytest.raises(SseFrameTooLarge):
            framer.feed(event[50:])


_field_values = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=15).map(
    str.encode
)
_lines = st.one_of(
    st.builds(lambda v: b"data: " + v, _field_values),
    st.builds(lambda v: b"data:" + v, _field_values),
    st.builds(lambda v: b"event: " + v, _field_values),
    st.builds(lambda v: b": " + v, _field_values),
    st.just(b"data"),
)


@st.composite
def sse_events(draw: st.DrawFn) -> bytes:
    """One event: one to three non-empty lines and an empty line, in one line-ending style."""
    ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return b"".join(line + ending for line in draw(st.lists(_lines, min_size=1, max_size=3))) + ending


class TestFramerProperties:
    @PROPERTY
    @given(st.lists(sse_events(), max_size=6), st.data())
    def test_framing_does_not_depend_on_chunking(self, events: list[bytes], data: st.DataObject) -> None:
        stream = b"".join(events)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        got, rest = frame(stream, *cuts)
        assert (got, rest) == frame(stream)
        assert b"".join(got) + rest == stream
        if events and not events[-1].endswith(b"\r"):
            assert (got, rest) == (events, b"")
        elif events:
            assert (got, rest) == (events[:-1], events[-1])


class TestEventJson:
    @pytest.mark.parametrize(
        "event",
        [
            b'data: {"a": 1}\n\n',
            b'data:{"a": 1}\n\n',
            b'data: {"a": 1}\r\n\r\n',
            b'data: {"a": 1}\r\r',
            b'event: chunk\nid: 7\ndata: {"a": 1}\n\n',
            b'data: {"a":\ndata: 1}\n\n',
            b': keepalive\ndata: {"a": 1}\n\n',
            b'data: {"a": 1}',
        ],
    )
    def test_the_payload(self, event: bytes) -> None:
        assert event_json(event) == {"a": 1}

    @pytest.mark.parametrize(
        "event",
        [
            DONE_EVENT,
            b"data:[DONE]\r\n\r\n",
            b": keepalive\n\n",
            b"event: ping\n\n",
            b"data: not json\n\n",
            b"\n",
        ],
    )
    def test_no_payload(self, event: bytes) -> None:
        assert event_json(event) is None

    def test_multiple_data_lines_are_joined_with_lf(self) -> None:
        assert event_json(b'data: ["a",\r\ndata: "b"]\r\n\r\n') == ["a", "b"]
        assert event_json(b"data\ndata: 1\n\n") == 1  # a bare "data" line adds an empty line

    def test_done(self) -> None:
        assert is_done(DONE_EVENT)
        assert is_done(b"data:[DONE]\r\n\r\n")
        assert not is_done(DELTA)
        assert not is_done(b": [DONE]\n\n")


class TestReplace:
    def test_keeps_crlf_on_the_edited_frame(self) -> None:
        edited = replace_event_json(b'data: {"usage": {}}\r\n\r\n', {"usage": {"cached_tokens": 1}})
        assert edited == b'data: {"usage":{"cached_tokens":1}}\r\n\r\n'
        assert b"}\n\r" not in edited

    def test_keeps_other_fields(self) -> None:
        event = b'event: chunk\r\nid: 7\r\ndata: {"a": 1}\r\n: note\r\n\r\n'
        assert replace_event_json(event, {"b": 2}) == b'event: chunk\r\nid: 7\r\ndata: {"b":2}\r\n: note\r\n\r\n'

    def test_folds_several_data_lines_into_one(self) -> None:
        assert replace_event_json(b"data: [1,\ndata: 2]\n\n", [3]) == b"data: [3]\n\n"

    def test_no_space_data_becomes_a_spaced_line(self) -> None:
        assert replace_event_json(b'data:{"a":1}\n\n', {"a": 2}) == b'data: {"a":2}\n\n'

    def test_an_event_without_data_gets_one(self) -> None:
        assert replace_event_json(b"id: 1\r\n\r\n", {"a": 2}) == b'id: 1\r\ndata: {"a":2}\r\n\r\n'

    @PROPERTY
    @given(sse_events(), st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)))
    def test_the_payload_reads_back(self, event: bytes, payload: dict[str, Any]) -> None:
        edited = replace_event_json(event, payload)
        assert event_json(edited) == payload
        assert edited.endswith(event[-2:] if event.endswith(b"\r\n") else event[-1:])
        assert frame(edited) == ([edited], b"") or event.endswith(b"\r")


class TestBuildAndPredicates:
    def test_data_event(self) -> None:
        assert data_event({"a": 1}) == b'data: {"a":1}\n\n'
        assert data_event({"a": 1}, crlf=True) == b'data: {"a":1}\r\n\r\n'
        assert DONE_EVENT == b"data: [DONE]\n\n"

    def test_usage_frame(self) -> None:
        assert is_usage_frame(orjson.loads(USAGE[6:]))
        assert not is_usage_frame({"choices": [{"index": 0}], "usage": {"prompt_tokens": 1}})
        assert not is_usage_frame({"choices": [], "usage": None})
        assert not is_usage_frame({"usage": {"prompt_tokens": 1}})
        assert not is_usage_frame([])

    def test_carries_usage(self) -> None:
        assert carries_usage({"choices": [{"index": 0}], "usage": {"prompt_tokens": 1}})
        assert not carries_usage({"choices": [], "usage": None})
        assert not carries_usage("usage")

    def test_error_frame(self) -> None:
        assert is_error_frame({"error": {"message": "overloaded"}})
        assert not is_error_frame({"error": None, "choices": []})
        assert not is_error_frame({"choices": []})
        assert not is_error_frame(None)


@pytest.mark.parametrize(
    "event",
    [
        USAGE,
        b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\r\n\r\n',
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}\n\n',
        b'data: {"error":{"message":"boom"}}\n\n',
        b'data: {"error": null}\n\n',
    ],
)
def test_frames_with_usage_or_error_are_inspected(event: bytes) -> None:
    assert may_carry_usage_or_error(event)


@pytest.mark.parametrize(
    "event",
    [
        DELTA,
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n',
        b'data: {"choices": [{"delta": {"content": "x"}}], "usage": null}\n\n',
        b'data: {"choices":[{"delta":{"content":"say \\"usage\\": {1} and \\"error\\": 2"}}]}\n\n',
        DONE_EVENT,
    ],
)
def test_content_frames_are_not_inspected(event: bytes) -> None:
    assert not may_carry_usage_or_error(event)


@PROPERTY
@given(
    st.dictionaries(
        st.sampled_from(["usage", "error", "choices", "id"]),
        st.none() | st.integers(0, 10**6) | st.dictionaries(st.text(max_size=3), st.integers(0, 10**6), max_size=2),
        max_size=4,
    )
)
def test_every_frame_that_carries_usage_or_error_is_inspected(frame: dict[str, Any]) -> None:
    event = data_event(frame)
    if carries_usage(frame) or "error" in frame:
        assert may_carry_usage_or_error(event)


@pytest.mark.parametrize(
    ("chunk", "plain"),
    [
        (DELTA, len(DELTA)),
        (DELTA + DELTA, 2 * len(DELTA)),
        (DELTA + USAGE, len(DELTA)),
        (USAGE + DELTA, 0),
        (DELTA + DONE_EVENT, len(DELTA)),
        (DELTA + DELTA[:-1], len(DELTA)),  # an event still open stays for the framer
        (DELTA[:-1], 0),
        (DELTA.replace(b"\n", b"\r\n"), 0),  # CRLF framing goes through the framer
        (b'data: {"error":{"message":"boom"}}\n\n', 0),
        (NULL_USAGE + NULL_USAGE, 2 * len(NULL_USAGE)),  # each content frame's "usage":null needs no look
        (NULL_USAGE.replace(b":null", b": null") + USAGE, len(NULL_USAGE) + 1),  # spaced out: the regex
        (NULL_USAGE + USAGE.replace(b'"usage":', b'"usage" : '), len(NULL_USAGE)),
    ],
)
def test_the_plain_prefix_is_whole_events_that_need_no_look(chunk: bytes, plain: int) -> None:
    assert plain_prefix(chunk) == plain


@PROPERTY
@given(
    st.lists(
        st.sampled_from([DELTA, NULL_USAGE, USAGE, USAGE.replace(b":{", b": {"), DONE_EVENT, b": keep-alive\n\n"]),
        min_size=1,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
)
def test_splitting_gives_back_the_stream_and_every_event_that_needs_a_look(
    events: list[bytes], first_cut: int, second_cut: int
) -> None:
    stream = b"".join(events)
    cuts = sorted({min(first_cut, len(stream)), min(second_cut, len(stream))})
    framer = SseFramer()
    relayed = b""
    looked_at: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        plain, complete = framer.split(stream[start:end])
        assert not may_carry_usage_or_error(plain) and b"[DONE]" not in plain
        relayed += plain + b"".join(complete)
        looked_at += complete
    relayed += framer.flush()
    assert relayed == stream
    special = [event for event in events if may_carry_usage_or_error(event) or is_done(event)]
    assert [event for event in looked_at if may_carry_usage_or_error(event) or is_done(event)] == special
