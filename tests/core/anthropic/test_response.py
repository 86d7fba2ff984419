"""A chat completion as an Anthropic message, Anthropic's usage, and its errors (SPEC §8, §9)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.core.anthropic.errors import ERROR_TYPES, anthropic_error, error_type_for_status
from cachegate.core.anthropic.response import anthropic_usage, message_id, translate_response
from cachegate.core.types import CacheStats

from ..bodies import PROPERTY

USAGE = {"input_tokens": 1, "output_tokens": 2}


def completion(message: dict[str, Any], finish_reason: str | None = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason, **choice}
        ],
    }


def call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def translate(body: dict[str, Any], stop_sequences: tuple[str, ...] = ()) -> dict[str, Any]:
    return translate_response(body, model="qwen", stop_sequences=stop_sequences, usage=USAGE)


class TestMessage:
    def test_text(self) -> None:
        assert translate(completion({"content": "hello"})) == {
            "id": "msg_abc",
            "type": "message",
            "role": "assistant",
            "model": "qwen",
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": USAGE,
        }

    def test_reasoning_text_and_tool_calls(self) -> None:
        message = {
            "reasoning_content": "let me see",
            "content": "",
            "tool_calls": [call("call_1", "grep", '{"q": "x"}'), call(None, "ls", "")],
        }
        assert translate(completion(message, "tool_calls"))["content"] == [
            {"type": "thinking", "thinking": "let me see", "signature": ""},
            {"type": "tool_use", "id": "call_1", "name": "grep", "input": {"q": "x"}},
            {"type": "tool_use", "id": "toolu_abc_1", "name": "ls", "input": {}},
        ]

    def test_reasoning_is_read_by_vllms_newer_name_first(self) -> None:
        content = translate(completion({"reasoning": "new", "reasoning_content": "old", "content": "a"}))["content"]
        assert content[0] == {"type": "thinking", "thinking": "new", "signature": ""}

    @pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '"s"', "null"])
    def test_arguments_that_are_not_an_object_are_empty_input(self, arguments: str) -> None:
        content = translate(completion({"tool_calls": [call("c", "f", arguments)]}, "tool_calls"))["content"]
        assert content == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]

    @pytest.mark.parametrize("message", [{"content": None}, {"content": ""}, {}])
    def test_nothing_is_one_empty_text_block(self, message: dict[str, Any]) -> None:
        assert translate(completion(message))["content"] == [{"type": "text", "text": ""}]

    def test_ids_are_derived_from_the_completion(self) -> None:
        assert message_id("chatcmpl-xyz") == "msg_xyz"
        assert message_id("cmpl-1") == "msg_cmpl-1"
        assert message_id(None).startswith("msg_") and message_id(None) != message_id(None)

    def test_a_broken_completion_is_still_a_message(self) -> None:
        for broken in ({}, {"choices": []}, {"choices": ["x"]}, {"choices": [{"message": "x"}]}):
            assert translate(broken)["content"] == [{"type": "text", "text": ""}]


class TestStopReason:
    @pytest.mark.parametrize(
        ("finish_reason", "stop_reason"),
        [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("abort", "end_turn"),
            (None, "end_turn"),
        ],
    )
    def test_finish_reasons(self, finish_reason: str | None, stop_reason: str) -> None:
        assert translate(completion({"content": "a"}, finish_reason))["stop_reason"] == stop_reason

    def test_a_stop_sequence_is_named(self) -> None:
        body = completion({"content": "a"}, "stop", stop_reason="END")
        assert translate(body, ("END",))["stop_reason"] == "stop_sequence"
        assert translate(body, ("END",))["stop_sequence"] == "END"
        assert translate(body, ("OTHER",))["stop_reason"] == "end_turn"

    def test_an_eos_token_id_is_no_stop_sequence(self) -> None:
        assert translate(completion({"content": "a"}, "stop", stop_reason=151645), ("END",))["stop_sequence"] is None

    def test_stop_with_tool_calls_is_tool_use(self) -> None:
        assert translate(completion({"tool_calls": [call("c", "f", "{}")]}, "stop"))["stop_reason"] == "tool_use"


class TestUsage:
    def test_the_split(self) -> None:
        stats = CacheStats(read=100, creation_5m=30, creation_1h=20)
        assert anthropic_usage(200, 7, stats) == {
            "input_tokens": 50,
            "output_tokens": 7,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
        }

    def test_degraded_and_24h(self) -> None:
        usage = anthropic_usage(10, 1, CacheStats(), degraded=True, with_24h=True)
        assert usage["cache_degraded"] is True
        assert usage["cache_creation"]["ephemeral_24h_input_tokens"] == 0
        assert "cache_degraded" not in anthropic_usage(10, 1, CacheStats())

    @given(
        st.integers(0, 10_000),
        st.builds(CacheStats, *(st.integers(0, 5_000) for _ in range(4))),
        st.booleans(),
    )
    @PROPERTY
    def test_the_parts_sum_to_the_prompt(self, prompt: int, stats: CacheStats, with_24h: bool) -> None:
        usage = anthropic_usage(prompt, 0, stats, with_24h=with_24h)
        assert usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"] == prompt
        assert sum(usage["cache_creation"].values()) == usage["cache_creation_input_tokens"]
        assert all(value >= 0 for value in usage["cache_creation"].values())


class TestErrors:
    def test_the_shape(self) -> None:
        assert orjson.loads(anthropic_error("not_found_error", "no such model")) == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "no such model"},
        }

    @pytest.mark.parametrize(
        ("status", "type_"),
        [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (599, "api_error"),
        ],
    )
    def test_statuses(self, status: int, type_: str) -> None:
        assert error_type_for_status(status) == type_
        assert ERROR_TYPES.get(status, type_) == type_
