"""A built-in fake OpenAI-compatible upstream for the demo, the tests and the benchmarks.

It counts prompt tokens with the same token counter the gateway uses (so the demo shows exact
counts), streams realistic chunks, and can be told to misbehave per request with the header
``x-fake-behavior`` — a comma-separated list of:

``status=N``        answer with HTTP status N and an OpenAI error body
``stall=S``         wait S seconds before answering
``cut=N``           stream N content chunks, then drop the connection
``error-frame``     stream an ``{"error": …}`` frame instead of finishing
``no-usage``        leave out usage (JSON) or the usage frame (stream)
``cached=N``        report ``prompt_tokens_details.cached_tokens = N`` like vLLM does
``chunk-usage``     attach usage to every streamed chunk, as some engines do
``chunks=N``        stream N content chunks (default 20)
``pace=S``          wait S seconds between streamed chunks
``crlf``            frame the stream with CRLF line endings
``set-cookie``      answer with a ``Set-Cookie`` header

The last request it received is served at ``GET /_fake/last-request`` (the body) and
``GET /_fake/last-headers`` (the headers): tests use them to check what the gateway forwarded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import TokenCounter

_NO_PROMPT = ParsedPrompt(blocks=(), prefix_hashes=(), breakpoints=())
_WORDS = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ")


@dataclass(frozen=True, slots=True)
class Behavior:
    status: int = 200
    stall: float = 0.0
    cut_after: int | None = None
    error_frame: bool = False
    usage: bool = True
    cached_tokens: int | None = None
    chunk_usage: bool = False
    chunks: int = 20
    pace: float = 0.0
    crlf: bool = False
    set_cookie: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Behavior:
        if not header:
            return cls()
        fields: dict[str, Any] = {}
        for item in (part.strip() for part in header.split(",")):
            name, _, value = item.partition("=")
            if name == "status":
                fields["status"] = int(value)
            elif name == "stall":
                fields["stall"] = float(value)
            elif name == "cut":
                fields["cut_after"] = int(value)
            elif name == "error-frame":
                fields["error_frame"] = True
            elif name == "no-usage":
                fields["usage"] = False
            elif name == "cached":
                fields["cached_tokens"] = int(value)
            elif name == "chunk-usage":
                fields["chunk_usage"] = True
            elif name == "chunks":
                fields["chunks"] = int(value)
            elif name == "pace":
                fields["pace"] = float(value)
            elif name == "crlf":
                fields["crlf"] = True
            elif name == "set-cookie":
                fields["set_cookie"] = True
            elif name:
                raise ValueError(f"unknown fake behavior {name!r}")
        return cls(**fields)


class PromptCounter:
    """Prompt token totals, memoized by the request's prompt bytes so benchmarks measure the gateway."""

    def __init__(self, counter: TokenCounter, capacity: int = 4096) -> None:
        self._counter = counter
        self._memo: OrderedDict[bytes, int] = OrderedDict()
        self._capacity = capacity

    async def count(self, body: dict[str, Any]) -> int:
        key = hashlib.sha256(
            orjson.dumps([body.get("messages"), body.get("tools")], option=orjson.OPT_SORT_KEYS)
        ).digest()
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        total = (await self._counter.count(body, _NO_PROMPT, ())).total
        self._memo[key] = total
        if len(self._memo) > self._capacity:
            self._memo.popitem(last=False)
        return total


class FakeUpstream:
    def __init__(self, counter: TokenCounter) -> None:
        self._prompt = PromptCounter(counter)
        self.last_request: bytes = b""
        self.last_headers: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/_fake/last-request", self._last_request)
        app.router.add_get("/_fake/last-headers", self._last_headers)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": "qwen3-fake", "object": "model", "owned_by": "cachegate"}]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.last_request = body
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
                "model": "fake-embedding",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    async def _last_request(self, request: web.Request) -> web.Response:
        return web.Response(body=self.last_request, content_type="application/json")

    async def _last_headers(self, request: web.Request) -> web.Response:
        return _json(self.last_headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.last_request = raw
        self.last_headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            behavior = Behavior.parse(request.headers.get("x-fake-behavior"))
            body = orjson.loads(raw)
        except (ValueError, TypeError) as exc:
            return _error(400, f"fake upstream: bad request: {exc}")
        if behavior.stall:
            await asyncio.sleep(behavior.stall)
        if behavior.status >= 400:
            return _error(behavior.status, f"fake upstream told to fail with {behavior.status}")
        prompt_tokens = await self._prompt.count(body)
        model = body.get("model", "qwen3-fake")
        if body.get("stream"):
            return await self._stream(request, body, behavior, model, prompt_tokens)
        words = [_WORDS[i % len(_WORDS)] for i in range(behavior.chunks)]
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words)},
                    "finish_reason": "stop",
                }
            ],
        }
        if behavior.usage:
            payload["usage"] = _usage(prompt_tokens, len(words), behavior.cached_tokens)
        response = _json(payload, status=behavior.status)
        if behavior.set_cookie:
            response.set_cookie("upstream-session", uuid.uuid4().hex)
        return response

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behavior: Behavior, model: str, prompt_tokens: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=behavior.status, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        newline = b"\r\n" if behavior.crlf else b"\n"
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = _usage(prompt_tokens, behavior.chunks, behavior.cached_tokens)

        def frame(choices: list[dict[str, Any]], with_usage: dict[str, Any] | None = None) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage or behavior.chunk_usage:
                chunk["usage"] = with_usage
            return b"data: " + orjson.dumps(chunk) + newline + newline

        per_chunk = usage if behavior.chunk_usage else None
        await response.write(
            frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], per_chunk)
        )
        for i in range(behavior.chunks):
            if behavior.cut_after is not None and i == behavior.cut_after:
                assert request.transport is not None
                request.transport.abort()  # the client sees a broken chunked body
                return response
            if behavior.pace:
                await asyncio.sleep(behavior.pace)
            delta = {"content": _WORDS[i % len(_WORDS)]}
            await response.write(frame([{"index": 0, "delta": delta, "finish_reason": None}], per_chunk))
        if behavior.error_frame:
            error = {"error": {"message": "fake upstream error frame", "type": "server_error", "code": None}}
            await response.write(b"data: " + orjson.dumps(error) + newline + newline)
            await response.write_eof()
            return response
        await response.write(frame([{"index": 0, "delta": {}, "finish_reason": "stop"}], per_chunk))
        if include_usage and behavior.usage:
            await response.write(frame([], usage))
        await response.write(b"data: [DONE]" + newline + newline)
        await response.write_eof()
        return response


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message, "type": "server_error", "param": None, "code": None}}, status)


async def start_fake_upstream(counter: TokenCounter, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the fake upstream on ``host:port`` (port 0 picks a free one); returns the runner and the port."""
    runner = web.AppRunner(FakeUpstream(counter).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server else ()
    return runner, sockets[0].getsockname()[1] if sockets else port
