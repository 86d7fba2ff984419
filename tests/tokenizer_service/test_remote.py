"""The remote counter against a running tokenizer service: in-process counts; every failure a TokenCountError."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from cachegate.asgi import JSON_HEADERS, Receive, Scope, Send, read_body, send_bytes
from cachegate.core.types import ParsedPrompt
from cachegate.tokenizer_service.app import ServedModel, TokenizerService
from cachegate.tokens.base import CounterNotReady, PromptCounts, TokenCounter, TokenCountError, TokenizerLoadError
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.registry import TokenizerSpec, hf_counter, load_counter, open_counter
from cachegate.tokens.remote import RemoteTokenCounter
from cachegate.tokens.shipped import qwen3_files

from .chats import PLAIN_CONVERSATION, TOOL_ROUND_TRIP, TWO_BREAKPOINTS, gateway_view
from .servers import BackgroundServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SCRIPTED_VERSION = "sha256:scripted"
ONE_BLOCK = {"messages": [{"role": "user", "content": "hi"}]}
MARK = {"type": "ephemeral"}


class ScriptedService:
    """Answers ``/v1/models`` as a tokenizer service of ``qwen3`` would, and ``/v1/render`` as the test says."""

    def __init__(self) -> None:
        self.status = 200
        self.answer: Any = {
            "virtual_model": "qwen3",
            "tokenizer_version": SCRIPTED_VERSION,
            "total": 12,
            "breakpoints": [{"block": 0, "cumulative": 9}],
        }
        self.stall = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, 1 << 20)
        if scope["path"] == "/v1/models":
            models = {"models": [{"alias": "qwen3", "hf_repo": "qwen3", "tokenizer_version": SCRIPTED_VERSION}]}
            await send_bytes(send, 200, JSON_HEADERS, orjson.dumps(models))
            return
        await asyncio.sleep(self.stall)
        answer = self.answer if isinstance(self.answer, bytes) else orjson.dumps(self.answer)
        await send_bytes(send, self.status, JSON_HEADERS, answer)


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedService, str]]:
    service = ScriptedService()
    with BackgroundServer(service, lifespan="off") as server:
        yield service, server.url


@pytest.fixture
async def remote(service_url: str) -> AsyncIterator[RemoteTokenCounter]:
    counter = RemoteTokenCounter(service_url, "qwen3")
    await counter.open()
    yield counter
    await counter.aclose()


async def opened(url: str, timeout: float = 5.0) -> RemoteTokenCounter:
    counter = RemoteTokenCounter(url, "qwen3", timeout=timeout)
    await counter.open()
    return counter


async def test_open_learns_the_served_tokenizer_version(remote: RemoteTokenCounter, qwen3: ChatTokenCounter) -> None:
    assert isinstance(remote, TokenCounter)
    assert remote.tokenizer_version == qwen3.tokenizer_version


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(TWO_BREAKPOINTS, id="tools, multi-part content, two breakpoints"),
        pytest.param(TOOL_ROUND_TRIP, id="tool call, tool result, automatic breakpoint"),
        pytest.param(PLAIN_CONVERSATION, id="string content, message-level markers"),
    ],
)
async def test_counts_are_the_in_process_counts(
    body: dict[str, Any], remote: RemoteTokenCounter, qwen3: ChatTokenCounter
) -> None:
    prompt, forwarded = gateway_view(body)
    breakpoints = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
    assert len(breakpoints) == 2

    for blocks in (breakpoints, breakpoints[1:]):  # all of them; only the deeper one (after a hit)
        expected = await qwen3.count(body, prompt, blocks)
        assert await remote.count(forwarded, prompt, blocks) == expected
        assert expected.total is not None and all(0 < expected.cumulative[b] <= expected.total for b in blocks)


async def test_with_no_block_asked_the_count_is_the_total(remote: RemoteTokenCounter, qwen3: ChatTokenCounter) -> None:
    """What the fake upstream asks for its prompt_tokens."""
    no_prompt = ParsedPrompt(blocks=(), prefix_hashes=(), breakpoints=())
    _, forwarded = gateway_view(TWO_BREAKPOINTS)

    assert await remote.count(forwarded, no_prompt, ()) == await qwen3.count(forwarded, no_prompt, ())


async def test_a_block_the_template_leaves_out_comes_back_dropped() -> None:
    """A template without tools: a breakpoint on the tools has no count, the others do."""
    files = qwen3_files()
    no_tools = hf_counter(files.tokenizer_json, "{% for m in messages %}{{ m.content }}|{% endfor %}", {})
    body = {
        "tools": [{"type": "function", "function": {"name": "f", "description": "Does f."}, "cache_control": MARK}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello.", "cache_control": MARK}]}],
    }
    prompt, forwarded = gateway_view(body)
    with BackgroundServer(TokenizerService({"qwen3": ServedModel(no_tools, "no-tools")})) as server:
        counter = await opened(server.url)
        counts = await counter.count(forwarded, prompt, [0, 1])
        await counter.aclose()

    assert counts == await no_tools.count(body, prompt, [0, 1])
    assert counts.dropped == {0} and counts.cumulative.keys() == {1}


async def test_a_block_outside_the_prompt_is_refused(remote: RemoteTokenCounter) -> None:
    prompt, forwarded = gateway_view(ONE_BLOCK)

    with pytest.raises(TokenCountError, match="not in the prompt"):
        await remote.count(forwarded, prompt, [1])


async def test_a_request_the_service_cannot_count_is_a_count_error(remote: RemoteTokenCounter) -> None:
    body = {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function"}]}]}
    prompt, forwarded = gateway_view(body)

    with pytest.raises(TokenCountError, match=r"HTTP 422 \(COUNT_UNAVAILABLE\)"):
        await remote.count(forwarded, prompt, [1])


async def test_a_model_the_service_does_not_serve_fails_at_open(service_url: str) -> None:
    counter = RemoteTokenCounter(service_url, "llama-9000")

    with pytest.raises(TokenizerLoadError, match=r"does not serve model 'llama-9000' \(it serves: qwen3\)"):
        await counter.open()
    await counter.aclose()


async def test_an_unreachable_service_fails_at_open() -> None:
    counter = RemoteTokenCounter("http://127.0.0.1:9", "qwen3")

    with pytest.raises(TokenizerLoadError, match="unreachable"):
        await counter.open()
    await counter.aclose()


def test_the_version_is_unknown_before_open() -> None:
    with pytest.raises(CounterNotReady, match="not reached yet"):
        _ = RemoteTokenCounter("http://127.0.0.1:9", "qwen3").tokenizer_version


async def test_a_service_down_at_start_is_no_start_up_error_and_is_taken_up_when_it_answers() -> None:
    port = free_port()
    spec = TokenizerSpec.model_validate({"kind": "remote", "url": f"http://127.0.0.1:{port}", "model": "qwen3"})
    counter = await open_counter(spec)
    prompt, forwarded = gateway_view(ONE_BLOCK)
    with pytest.raises(CounterNotReady):
        _ = counter.tokenizer_version
    with pytest.raises(TokenCountError):
        await counter.count(forwarded, prompt, [0])
    with BackgroundServer(ScriptedService(), lifespan="off", port=port):
        async with asyncio.timeout(20):
            while True:
                try:
                    version = counter.tokenizer_version
                    break
                except CounterNotReady:
                    await asyncio.sleep(0.02)
        assert version == SCRIPTED_VERSION
        counts = await counter.count(forwarded, prompt, [0])
        assert counts.cumulative == {0: 9} and counts.tokenizer_version == SCRIPTED_VERSION
    await counter.aclose()


async def test_a_service_that_changes_its_version_gives_a_new_scope(scripted: tuple[ScriptedService, str]) -> None:
    """The request that learns of a new version is degraded; later ones are counted under the new one."""
    service, url = scripted
    counter = await opened(url)
    service.answer = {**service.answer, "tokenizer_version": "sha256:other"}
    prompt, forwarded = gateway_view(ONE_BLOCK)
    with pytest.raises(TokenCountError, match="another tokenizer version"):
        await counter.count(forwarded, prompt, [0])
    assert counter.tokenizer_version == "sha256:other"
    counts = await counter.count(forwarded, prompt, [0])
    assert counts.cumulative == {0: 9} and counts.tokenizer_version == "sha256:other"
    await counter.aclose()


async def test_a_service_gone_down_is_a_count_error(qwen3: ChatTokenCounter) -> None:
    prompt, forwarded = gateway_view(ONE_BLOCK)
    with BackgroundServer(TokenizerService({"qwen3": ServedModel(qwen3, "qwen3")})) as server:
        counter = await opened(server.url)
        await counter.count(forwarded, prompt, [0])

    with pytest.raises(TokenCountError, match="unreachable"):
        await counter.count(forwarded, prompt, [0])
    await counter.aclose()


async def test_the_scripted_service_answer_is_taken(scripted: tuple[ScriptedService, str]) -> None:
    """The baseline of the failure tests below: the scripted answer, well formed, is believed."""
    _, url = scripted
    counter = await opened(url)
    prompt, forwarded = gateway_view(ONE_BLOCK)

    assert await counter.count(forwarded, prompt, [0]) == PromptCounts(cumulative={0: 9}, total=12)
    await counter.aclose()


async def test_a_service_slower_than_the_timeout_is_a_count_error(scripted: tuple[ScriptedService, str]) -> None:
    service, url = scripted
    counter = await opened(url, timeout=0.2)
    service.stall = 1.0
    prompt, forwarded = gateway_view(ONE_BLOCK)

    with pytest.raises(TokenCountError, match=r"unreachable: .*Timeout"):
        await counter.count(forwarded, prompt, [0])
    await counter.aclose()


@pytest.mark.parametrize(
    ("status", "answer", "reason"),
    [
        pytest.param(200, b"<html>busy</html>", "malformed answer", id="not JSON"),
        pytest.param(200, {"virtual_model": "qwen3"}, "malformed answer", id="fields missing"),
        pytest.param(
            200,
            {
                "virtual_model": "qwen3",
                "tokenizer_version": SCRIPTED_VERSION,
                "total": 12,
                "breakpoints": [{"block": 0, "cumulative": "9"}],
            },
            "malformed answer",
            id="a count that is not a number",
        ),
        pytest.param(
            200,
            {
                "virtual_model": "qwen3",
                "tokenizer_version": SCRIPTED_VERSION,
                "total": 12,
                "breakpoints": [{"block": 0, "cumulative": -1}],
            },
            "malformed answer",
            id="a negative count",
        ),
        pytest.param(
            200,
            {"virtual_model": "qwen3", "tokenizer_version": SCRIPTED_VERSION, "total": 12, "breakpoints": []},
            r"left out blocks \[0\]",
            id="an asked-for block left out",
        ),
        pytest.param(
            200,
            {
                "virtual_model": "qwen3",
                "tokenizer_version": "sha256:other",
                "total": 12,
                "breakpoints": [{"block": 0, "cumulative": 9}],
            },
            "another tokenizer version",
            id="another tokenizer version",
        ),
        pytest.param(500, {"error": "boom"}, "HTTP 500$", id="server error"),
        pytest.param(422, {"error": {"code": "UNMAPPED_MODEL"}}, r"HTTP 422 \(UNMAPPED_MODEL\)", id="model gone"),
    ],
)
async def test_a_bad_answer_is_a_count_error(
    status: int, answer: Any, reason: str, scripted: tuple[ScriptedService, str]
) -> None:
    service, url = scripted
    counter = await opened(url)
    service.status, service.answer = status, answer
    prompt, forwarded = gateway_view(ONE_BLOCK)

    with pytest.raises(TokenCountError, match=reason):
        await counter.count(forwarded, prompt, [0])
    await counter.aclose()


async def test_a_remote_tokenizer_from_config_counts_like_the_in_process_one(
    service_url: str, qwen3: ChatTokenCounter
) -> None:
    spec = TokenizerSpec.model_validate({"kind": "remote", "url": service_url, "model": "qwen3"})
    counter = await open_counter(spec)
    try:
        prompt, forwarded = gateway_view(TWO_BREAKPOINTS)
        blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
        assert counter.tokenizer_version == qwen3.tokenizer_version
        assert await counter.count(forwarded, prompt, blocks) == await qwen3.count(TWO_BREAKPOINTS, prompt, blocks)
    finally:
        await counter.aclose()


def test_a_remote_tokenizer_is_not_loaded_from_files() -> None:
    spec = TokenizerSpec.model_validate({"kind": "remote", "url": "http://127.0.0.1:9", "model": "qwen3"})
    with pytest.raises(TokenizerLoadError, match="open_counter"):
        load_counter(spec)
