"""The fake upstream answers agent clients as vLLM does: tool calls, reasoning, stop sequences
and token limits, chosen by header or by a ``[fake: …]`` line, over real HTTP with the openai SDK."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from cachegate.fake_upstream import start_fake_upstream

from fixed_counter import FixedCounter

BASH = {
    "type": "function",
    "function": {
        "name": "Bash",
        "description": "Run a command.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout": {"type": "integer"},
                "mode": {"type": "string", "enum": ["safe", "full"]},
                "background": {"type": "boolean"},
            },
            "required": ["command", "timeout", "mode"],
        },
    },
}
READ = {
    "type": "function",
    "function": {
        "name": "Read",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    runner, port = await start_fake_upstream(FixedCounter(), "127.0.0.1", 0)
    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk
    await runner.cleanup()


@dataclass
class Completion:
    """A completion as a client assembles it, from a JSON body or from the stream's deltas."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None
    completion_tokens: int | None = None
    deltas: list[dict[str, Any]] = field(default_factory=list)


async def complete(sdk: openai.AsyncOpenAI, stream: bool, behavior: str | None = None, **request: Any) -> Completion:
    request.setdefault("messages", [{"role": "user", "content": "Go."}])
    headers = {"x-fake-behavior": behavior} if behavior else {}
    if not stream:
        response = await sdk.chat.completions.create(model="m", extra_headers=headers, **request)
        choice = response.choices[0].model_dump()
        message = choice["message"]
        assert response.usage is not None
        return Completion(
            content=message["content"],
            reasoning=message.get("reasoning_content"),
            tool_calls=[call for call in message.get("tool_calls") or []],
            finish_reason=choice["finish_reason"],
            stop_reason=choice.get("stop_reason"),
            completion_tokens=response.usage.completion_tokens,
        )
    completion = Completion()
    chunks = await sdk.chat.completions.create(
        model="m", extra_headers=headers, stream=True, stream_options={"include_usage": True}, **request
    )
    async for chunk in chunks:
        if chunk.usage is not None:
            completion.completion_tokens = chunk.usage.completion_tokens
        for choice in (choice.model_dump() for choice in chunk.choices):
            delta = choice["delta"]
            completion.deltas.append(delta)
            if delta.get("content"):
                completion.content = (completion.content or "") + delta["content"]
            if delta.get("reasoning_content"):
                completion.reasoning = (completion.reasoning or "") + delta["reasoning_content"]
            for call in delta.get("tool_calls") or []:
                if call.get("id"):  # a call opens: keep a copy, the delta itself stays as it came
                    completion.tool_calls.append(copy.deepcopy(call))
                else:
                    completion.tool_calls[call["index"]]["function"]["arguments"] += call["function"]["arguments"]
            if choice["finish_reason"] is not None:
                completion.finish_reason = choice["finish_reason"]
                completion.stop_reason = choice.get("stop_reason")
    return completion


STREAMING = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@STREAMING
async def test_a_tool_call_to_the_first_tool_has_its_required_arguments(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    completion = await complete(client, stream, "tool-call=first", tools=[BASH, READ])

    assert completion.finish_reason == "tool_calls"
    assert not completion.content
    [call] = completion.tool_calls
    assert call["type"] == "function"
    assert call["id"].startswith("chatcmpl-tool-")
    assert call["function"]["name"] == "Bash"
    assert json.loads(call["function"]["arguments"]) == {"command": "example command", "timeout": 1, "mode": "safe"}


@STREAMING
async def test_a_tool_call_to_a_named_tool(client: openai.AsyncOpenAI, stream: bool) -> None:
    completion = await complete(client, stream, "tool-call=Read", tools=[BASH, READ])

    [call] = completion.tool_calls
    assert call["function"]["name"] == "Read"
    assert json.loads(call["function"]["arguments"]) == {"path": "example path"}
    assert completion.finish_reason == "tool_calls"


async def test_a_streamed_tool_call_opens_with_its_name_then_streams_its_arguments(client: openai.AsyncOpenAI) -> None:
    completion = await complete(client, True, "tool-call=first", tools=[BASH])

    calls = [delta["tool_calls"][0] for delta in completion.deltas if delta.get("tool_calls")]
    opening, *fragments = calls
    assert opening["index"] == 0 and opening["type"] == "function" and opening["id"]
    assert opening["function"] == {"name": "Bash", "arguments": ""}
    assert len(fragments) > 1
    assert all(fragment["index"] == 0 and fragment.get("id") is None for fragment in fragments)
    assert all(fragment["function"].get("name") is None and fragment["function"]["arguments"] for fragment in fragments)
    assert completion.completion_tokens == len(fragments)


async def test_a_tool_call_to_a_tool_the_request_lacks_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await complete(client, False, "tool-call=Write", tools=[BASH])


@STREAMING
@pytest.mark.parametrize(
    ("behavior", "reasoning"),
    [("reasoning", "Let me think about what is asked. "), ("reasoning=Plan first.", "Plan first.")],
    ids=["default", "given"],
)
async def test_reasoning_comes_before_the_answer(
    client: openai.AsyncOpenAI, stream: bool, behavior: str, reasoning: str
) -> None:
    completion = await complete(client, stream, f"{behavior},chunks=3")

    assert completion.reasoning == reasoning
    assert completion.content == "The quick brown "
    assert completion.finish_reason == "stop"
    if stream:
        kinds = ["reasoning" if delta.get("reasoning_content") else "content" for delta in completion.deltas[1:-1]]
        assert kinds == sorted(kinds, reverse=True)  # every reasoning delta before the first content delta


@STREAMING
async def test_reasoning_then_a_tool_call(client: openai.AsyncOpenAI, stream: bool) -> None:
    completion = await complete(client, stream, "reasoning,tool-call=first", tools=[READ])

    assert completion.reasoning
    assert completion.tool_calls[0]["function"]["name"] == "Read"
    assert completion.finish_reason == "tool_calls"


@STREAMING
async def test_a_stop_sequence_ends_the_answer_with_the_requests_first_stop(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    completion = await complete(client, stream, "stop-sequence", stop=["\nHuman:", "END"])

    assert completion.finish_reason == "stop"
    assert completion.stop_reason == "\nHuman:"


@STREAMING
@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
async def test_the_token_limit_cuts_the_answer(client: openai.AsyncOpenAI, stream: bool, limit_field: str) -> None:
    completion = await complete(client, stream, "reasoning=One two three.,chunks=5", **{limit_field: 4})

    assert completion.finish_reason == "length"
    assert completion.completion_tokens == 4
    assert completion.reasoning == "One two three."
    assert completion.content == "The "


@STREAMING
async def test_a_limit_above_the_answer_changes_nothing(client: openai.AsyncOpenAI, stream: bool) -> None:
    completion = await complete(client, stream, "chunks=3", max_tokens=32000)

    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == 3


@STREAMING
@pytest.mark.parametrize(
    "content",
    [
        "Run it.\n[fake: tool-call=first]",
        [{"type": "text", "text": "Run it."}, {"type": "text", "text": "[fake: tool-call=first ]"}],
    ],
    ids=["string", "parts"],
)
async def test_a_client_without_headers_chooses_by_a_line_of_its_last_user_message(
    client: openai.AsyncOpenAI, stream: bool, content: Any
) -> None:
    messages = [{"role": "user", "content": "[fake: status=500]"}, {"role": "user", "content": content}]

    completion = await complete(client, stream, messages=messages, tools=[BASH])

    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls[0]["function"]["name"] == "Bash"


@STREAMING
async def test_after_the_tool_result_the_line_no_longer_chooses(client: openai.AsyncOpenAI, stream: bool) -> None:
    call = {"id": "call-1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Run it.\n[fake: tool-call=first]"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": "done"},
    ]

    completion = await complete(client, stream, messages=messages, tools=[BASH])

    assert completion.finish_reason == "stop" and not completion.tool_calls
    assert completion.content.startswith("The quick ")


async def test_the_header_wins_over_the_line(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "[fake: tool-call=first]"}]

    completion = await complete(client, False, "chunks=2", messages=messages, tools=[BASH])

    assert completion.finish_reason == "stop"
    assert completion.content == "The quick "


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        (None, "messages"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "assistant", "content": "", "tool_calls": {"id": "c"}}], "messages[0].tool_calls"),
        (["hi"], "messages[0]"),
    ],
)
async def test_a_type_confused_body_is_refused_with_the_field_named_as_vllm_does(
    client: openai.AsyncOpenAI, messages: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model="qwen3-fake", messages=messages)
    assert refused.value.param == param


def exchange(port: int, method: str, path: str, body: bytes | None, headers: dict[str, Any]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_the_last_headers_are_served_whatever_bytes_they_held() -> None:
    runner, port = await start_fake_upstream(FixedCounter(), "127.0.0.1", 0)
    try:
        body = json.dumps({"model": "qwen3-fake", "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"content-type": "application/json", "x-note": "café".encode("latin-1")}  # not UTF-8
        status, _ = await asyncio.to_thread(exchange, port, "POST", "/v1/chat/completions", body, headers)
        assert status == 200
        status, seen = await asyncio.to_thread(exchange, port, "GET", "/_fake/last-headers", None, {})
        assert status == 200 and json.loads(seen)["x-note"] == "caf\ufffd"
    finally:
        await runner.cleanup()
