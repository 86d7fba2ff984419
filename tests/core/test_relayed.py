"""Completion tokens counted on the bytes of relayed chat-stream frames, for a client that left (SPEC §11)."""

from __future__ import annotations

import orjson

from cachegate.core.relayed import delta_frames


def frame(delta: dict[str, object], finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_each_frame_with_text_counts_one_token() -> None:
    stream = b"".join(
        [
            frame({"role": "assistant", "content": ""}),  # the opening role frame: no token
            frame({"content": "The "}),
            frame({"reasoning_content": "Let "}),
            frame({"tool_calls": [{"index": 0, "function": {"arguments": '{"a'}}]}),
            frame({"content": ""}),  # a keep-alive: no token
            frame({}, "stop"),  # the finish frame: no token
            b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n',
            b"data: [DONE]\n\n",
        ]
    )

    assert delta_frames(stream) == 3


def test_whole_frames_count_the_same_however_they_are_grouped_in_chunks() -> None:
    # The relay hands over whole events (a chunk that ends mid-event goes through the framer first).
    frames = [frame({"role": "assistant", "content": ""}), *(frame({"content": f"w{i} "}) for i in range(9))]
    frames.append(frame({}, "stop"))

    for size in (1, 2, 3, 11):
        assert sum(delta_frames(b"".join(frames[i : i + size])) for i in range(0, len(frames), size)) == 9


def test_bytes_without_frames_count_nothing() -> None:
    assert delta_frames(b": keep-alive\n\n") == 0
    assert delta_frames(b"") == 0
