"""A built-in fake OpenAI-compatible upstream for the demo, the tests and the benchmarks.

It counts prompt tokens with the same token counter the gateway uses (so the demo shows exact
counts), streams realistic chunks, and can be told to misbehave per request with the header
``x-fake-behavior`` — a comma-separated list of:

``status=N``        answer with HTTP status N and an OpenAI error body
``stall=S``         wait S seconds before answering
``cut=N``           stream N chunks, then drop the connection
``error-frame``     stream an ``{"error": …}`` frame instead of finishing
``no-usage``        leave out usage (JSON) or the usage frame (stream)
``cached=N``        report ``prompt_tokens_details.cached_tokens = N`` like vLLM does (started with a
                    prefix KV cache, ``--kv-cache-blocks``, it reports what that cache held instead)
``chunk-usage``     attach usage to every streamed chunk, as some engines do
``chunks=N``        stream N content chunks (default 20)
``pace=S``          wait S seconds between streamed chunks
``big-event=N``     stream, first, one content chunk whose text is N bytes long: an SSE event past
                    the gateway's 1 MiB limit, as an engine echoing a huge output would send
``crlf``            frame the stream with CRLF line endings
``set-cookie``      answer with a ``Set-Cookie`` header
``miss-header``     answer with an ``x-cachegate-cache-miss`` header, as a cachegate in front of an engine would
``tool-call=NAME``  answer with one call of the request's tool NAME (``first``: its first tool),
                    arguments built from the tool schema's required properties;
                    finish_reason ``tool_calls``
``reasoning[=TEXT]`` emit ``reasoning_content`` (deltas, or the message's field) before the
                    answer, as vLLM's reasoning parsers do (TEXT without commas)
``stop-sequence``   finish with ``stop`` and vLLM's ``stop_reason`` set to the request's first
                    ``stop`` string
``timings[=every]`` add llama.cpp's ``timings`` object (with ``cache_n`` = the ``cached`` count) to
                    the JSON body and the last stream chunk, and to every chunk when the request
                    sets ``timings_per_token`` (``every``: to every chunk regardless)

A client that cannot send headers (Claude Code behind the gateway) chooses the same way with a
line ``[fake: <behaviors>]`` in its last user message's text; the header wins when both are
there. The line answers the user's message only: once a tool result follows it, the fake answers
with text, so an agent's tool loop ends after one round. ``max_tokens`` (or ``max_completion_tokens``)
is honoured: the completion stops after that many chunks (reasoning, content and argument
fragments alike) with finish_reason ``length``. Streamed tool calls are framed as vLLM frames
them: a first delta with ``index``, ``id``, ``type``, the function's name and empty arguments,
then argument fragments.

Besides chat completions it serves ``/v1/completions`` (JSON and stream, usage frame on
``include_usage``), ``/v1/responses`` (JSON, and a stream of typed events ending in
``response.completed``) and ``/v1/embeddings``, with the same behaviors where they apply: every
route reports ``cached`` as vLLM does (``prompt_tokens_details`` or, for Responses,
``input_tokens_details``) and adds ``timings`` as llama.cpp does, so the gateway's scrubbing is
tested against an engine's shapes. Their prompts are counted as plain text when the counter can.
A body of the wrong shape (``messages`` not an array of objects, ``content`` a number, …) is
refused as vLLM refuses it: 400 naming the field (the check is ``core/chat_shape.py``, the one
cachegate itself applies), never a 500; so is a prompt the counter cannot render.

The last request it received is served at ``GET /_fake/last-request`` (the body) and
``GET /_fake/last-headers`` (the headers): tests use them to check what the gateway forwarded.
``GET /_fake/stats`` counts the chat requests served, their prompt tokens and the cached ones:
several fakes, each with its own prefix KV cache, are the replicas of one model.
A stream whose reader closed the connection stops there, as an engine aborts the generation;
``GET /_fake/streams-cut`` says how many have.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from aiohttp import web

from cachegate.core.blocks import hashed_prompt
from cachegate.core.chat_shape import DEFAULT_LIMITS, ShapeError, check_chat_shape
from cachegate.core.types import ParsedPrompt
from cachegate.fake_prefix_cache import PrefixKvCache
from cachegate.tokens.base import TextCounter, TokenCounter, TokenCountError

_NO_PROMPT = ParsedPrompt(blocks=(), prefix_hashes=(), breakpoints=())
_WORDS = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ")
_DEFAULT_REASONING = "Let me think about what is asked. "
_ARGUMENT_FRAGMENT = 8  # characters of a tool call's JSON arguments per streamed delta
_BEHAVIOR_LINE = re.compile(r"^\[fake:\s*(.*?)\s*\]\s*$", re.MULTILINE)


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
    big_event: int = 0
    crlf: bool = False
    set_cookie: bool = False
    miss_header: bool = False
    tool_call: str | None = None
    reasoning: str | None = None
    stop_sequence: bool = False
    timings: Literal["off", "last", "every"] = "off"

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
            elif name == "big-event":
                fields["big_event"] = int(value)
            elif name == "crlf":
                fields["crlf"] = True
            elif name == "set-cookie":
                fields["set_cookie"] = True
            elif name == "miss-header":
                fields["miss_header"] = True
            elif name == "tool-call":
                fields["tool_call"] = value or "first"
            elif name == "reasoning":
                fields["reasoning"] = value or _DEFAULT_REASONING
            elif name == "stop-sequence":
                fields["stop_sequence"] = True
            elif name == "timings":
                fields["timings"] = "every" if value == "every" else "last"
            elif name:
                raise ValueError(f"unknown fake behavior {name!r}")
        return cls(**fields)


def requested_behavior(header: str | None, body: dict[str, Any]) -> Behavior:
    """The behavior the header asks for, else the ``[fake: …]`` line of the last user message."""
    if header:
        return Behavior.parse(header)
    found = _BEHAVIOR_LINE.search(_last_user_text(body))
    return Behavior.parse(found.group(1) if found else None)


def _last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message; none once a tool result follows it.

    The line chooses the answer to the user's message: after the tool it asked for has run, the fake
    answers with text, as a model ends its turn, so an agent loop (Claude Code's) comes to an end.
    """
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "tool":
            return ""
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
            return ""
    return ""


PieceKind = Literal["reasoning", "content", "arguments"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Answer:
    """What the fake model answers, as the chunks a stream would carry: the JSON and the SSE
    forms are both made from it, so they cannot tell different stories."""

    pieces: list[tuple[PieceKind, str]]
    finish_reason: str
    tool_call: ToolCall | None = None
    stop_reason: str | None = None

    def text_of(self, kind: PieceKind) -> str | None:
        texts = [text for piece_kind, text in self.pieces if piece_kind == kind]
        return "".join(texts) if texts else None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text_of("content")}
        reasoning = self.text_of("reasoning")
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        if self.tool_call is not None:
            message["tool_calls"] = [
                {
                    "id": self.tool_call.id,
                    "type": "function",
                    "function": {"name": self.tool_call.name, "arguments": self.text_of("arguments") or ""},
                }
            ]
        elif message["content"] is None:
            message["content"] = ""
        return message

    def delta(self, position: int) -> dict[str, Any]:
        """The streamed delta of piece ``position``; a call's first fragment also opens the call."""
        kind, text = self.pieces[position]
        if kind == "reasoning":
            return {"reasoning_content": text}
        if kind == "content":
            return {"content": text}
        assert self.tool_call is not None
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def call_opening(self) -> dict[str, Any]:
        assert self.tool_call is not None
        opening = {
            "id": self.tool_call.id,
            "type": "function",
            "function": {"name": self.tool_call.name, "arguments": ""},
        }
        return {"tool_calls": [{"index": 0, **opening}]}

    def finishing_choice(self) -> dict[str, Any]:
        """What the last choice of a response says about how it ended."""
        choice: dict[str, Any] = {"finish_reason": self.finish_reason}
        if self.stop_reason is not None:
            choice["stop_reason"] = self.stop_reason
        return choice


class FakeRequestError(ValueError):
    """A request the fake upstream cannot answer as told (a 400)."""


def plan_answer(body: dict[str, Any], behavior: Behavior) -> Answer:
    """The answer to ``body`` as ``behavior`` shapes it, cut at the request's token limit."""
    pieces: list[tuple[PieceKind, str]] = []
    if behavior.reasoning is not None:
        pieces.extend(("reasoning", word) for word in re.findall(r"\S+\s*", behavior.reasoning))
    tool_call = None
    if behavior.tool_call is not None:
        tool_call = _tool_call(body, behavior.tool_call)
        arguments = tool_call.arguments
        pieces.extend(
            ("arguments", arguments[start : start + _ARGUMENT_FRAGMENT])
            for start in range(0, len(arguments), _ARGUMENT_FRAGMENT)
        )
        finish_reason = "tool_calls"
    else:
        pieces.extend(("content", _WORDS[i % len(_WORDS)]) for i in range(behavior.chunks))
        finish_reason = "stop"
    stop_reason = _first_stop(body) if behavior.stop_sequence and tool_call is None else None
    limit = _token_limit(body)
    if limit is not None and limit < len(pieces):
        return Answer(pieces[:limit], "length", tool_call)
    return Answer(pieces, finish_reason, tool_call, stop_reason)


def _tool_call(body: dict[str, Any], wanted: str) -> ToolCall:
    tools = [tool.get("function") for tool in body.get("tools") or [] if isinstance(tool, dict)]
    functions = [function for function in tools if isinstance(function, dict)]
    if wanted != "first":
        functions = [function for function in functions if function.get("name") == wanted]
    if not functions:
        raise FakeRequestError(f"no tool {wanted!r} in the request to call")
    function = functions[0]
    arguments = _example_arguments(function.get("parameters"))
    return ToolCall(f"chatcmpl-tool-{uuid.uuid4().hex}", str(function.get("name")), orjson.dumps(arguments).decode())


def _example_arguments(schema: Any) -> dict[str, Any]:
    """A value for each required property of an object schema, of its type."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    return {name: _example_value(properties.get(name), name) for name in required if isinstance(name, str)}


def _example_value(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return name
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((one for one in kind if one != "null"), "string")
    examples: dict[str, Any] = {"integer": 1, "number": 1, "boolean": True, "array": [], "null": None}
    if kind == "object":
        return _example_arguments(schema)
    return examples.get(kind, f"example {name}") if isinstance(kind, str) else f"example {name}"


def _first_stop(body: dict[str, Any]) -> str | None:
    stop = body.get("stop")
    if isinstance(stop, str):
        return stop
    if isinstance(stop, list) and stop and isinstance(stop[0], str):
        return stop[0]
    return None


def _token_limit(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            return max(limit, 0)
    return None


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


def _timings(behavior: Behavior, prompt_tokens: int, predicted: int) -> dict[str, Any]:
    """llama.cpp's ``timings`` object: ``cache_n`` is what its KV cache held of the prompt."""
    cached = behavior.cached_tokens or 0
    return {
        "cache_n": cached,
        "prompt_n": prompt_tokens - cached,
        "prompt_ms": 1.5,
        "prompt_per_token_ms": 0.1,
        "prompt_per_second": 10000.0,
        "predicted_n": predicted,
        "predicted_ms": 2.5,
        "predicted_per_token_ms": 0.1,
        "predicted_per_second": 10000.0,
    }


def _chunk_timings(behavior: Behavior, body: dict[str, Any]) -> bool:
    """Whether every streamed chunk carries ``timings``, as llama.cpp's ``timings_per_token`` asks."""
    return behavior.timings == "every" or (behavior.timings == "last" and body.get("timings_per_token") is True)


class FakeUpstream:
    def __init__(self, counter: TokenCounter, kv_cache_blocks: int = 0) -> None:
        self._counter = counter
        self._prompt = PromptCounter(counter)
        # A replica's prefix KV cache (fake_prefix_cache.py), when given a size: chat requests
        # then report the tokens it held as cached_tokens, as vLLM does.
        self._kv = PrefixKvCache(kv_cache_blocks) if kv_cache_blocks > 0 else None
        self.last_request: bytes = b""
        self.last_headers: dict[str, str] = {}
        self.streams_cut = 0  # streams stopped because the reader (the gateway) closed the connection
        self.chat_requests = 0
        self.prompt_tokens = 0  # of the chat requests answered
        self.cached_tokens = 0  # of those, found in the prefix KV cache

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/_fake/last-request", self._last_request)
        app.router.add_get("/_fake/last-headers", self._last_headers)
        app.router.add_get("/_fake/streams-cut", self._streams_cut)
        app.router.add_get("/_fake/stats", self._stats)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": "qwen3-fake", "object": "model", "owned_by": "cachegate"}]})

    async def _received(self, request: web.Request) -> tuple[dict[str, Any], Behavior]:
        """The request's JSON object and the behavior it asks for; remembered for ``/_fake/last-*``."""
        raw = await request.read()
        self.last_request = raw
        self.last_headers = {name.lower(): value for name, value in request.headers.items()}
        body = orjson.loads(raw)
        if not isinstance(body, dict):
            raise FakeRequestError("the body is not a JSON object")
        behavior = Behavior.parse(request.headers.get("x-fake-behavior"))
        if behavior.stall:
            await asyncio.sleep(behavior.stall)
        return body, behavior

    async def _text_tokens(self, value: Any) -> int:
        """A plain-text prompt's tokens: the counter's own plain count when it has one, else words."""
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        strings = [text for text in texts if isinstance(text, str)]
        ids = sum(1 for text in texts if isinstance(text, int))  # a prompt given as token ids
        if isinstance(self._counter, TextCounter) and strings:
            return sum(await self._counter.count_texts(strings)) + ids
        return sum(len(text.split()) for text in strings) + ids

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            body, behavior = await self._received(request)
        except (ValueError, TypeError) as exc:
            return _error(400, f"fake upstream: bad request: {exc}")
        if behavior.status >= 400:
            return _error(behavior.status, f"fake upstream told to fail with {behavior.status}")
        prompt_tokens = await self._text_tokens(body.get("input"))
        payload: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
            "model": body.get("model", "fake-embedding"),
        }
        if behavior.usage:
            usage = _usage(prompt_tokens, 0, behavior.cached_tokens)
            del usage["completion_tokens"]
            payload["usage"] = usage
        if behavior.timings != "off":
            payload["timings"] = _timings(behavior, prompt_tokens, 0)
        return _json(payload)

    async def _planned(self, request: web.Request) -> tuple[dict[str, Any], Behavior, Answer] | web.Response:
        """A text route's body, behavior and planned answer, or the error it is answered with instead."""
        try:
            body, behavior = await self._received(request)
            answer = plan_answer(body, behavior)
        except (ValueError, TypeError) as exc:
            return _error(400, f"fake upstream: bad request: {exc}")
        if behavior.status >= 400:
            return _error(behavior.status, f"fake upstream told to fail with {behavior.status}")
        return body, behavior, answer

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions, as vLLM answers it: ``text_completion`` objects, JSON or streamed."""
        planned = await self._planned(request)
        if isinstance(planned, web.Response):
            return planned
        body, behavior, answer = planned
        prompt_tokens = await self._text_tokens(body.get("prompt"))
        usage = _usage(prompt_tokens, len(answer.pieces), behavior.cached_tokens)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "qwen3-fake"),
        }
        if not body.get("stream"):
            text = answer.text_of("content") or ""
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": answer.finish_reason}
            payload: dict[str, Any] = {**head, "choices": [choice]}
            if behavior.usage:
                payload["usage"] = usage
            if behavior.timings != "off":
                payload["timings"] = _timings(behavior, prompt_tokens, len(answer.pieces))
            return _json(payload)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        every = _chunk_timings(behavior, body)
        frames: list[dict[str, Any]] = []
        for position, (_, text) in enumerate(answer.pieces):
            last = position == len(answer.pieces) - 1
            finish = answer.finish_reason if last else None
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            frame: dict[str, Any] = {**head, "choices": [choice]}
            if include_usage:
                frame["usage"] = None
            if every or (last and behavior.timings != "off"):
                frame["timings"] = _timings(behavior, prompt_tokens, position + 1)
            frames.append(frame)
        if include_usage and behavior.usage:
            frames.append({**head, "choices": [], "usage": usage})
        return await self._sse(request, behavior, [(None, frame) for frame in frames], done=True)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses, as vLLM answers it: a ``response`` object, or its typed event stream."""
        planned = await self._planned(request)
        if isinstance(planned, web.Response):
            return planned
        body, behavior, answer = planned
        given = body.get("input")
        instructions = body.get("instructions")
        if isinstance(given, str):
            prompt_tokens = await self._text_tokens([instructions, given] if isinstance(instructions, str) else given)
        else:  # a list of input items: a rough count, as the gateway never counts these itself
            prompt_tokens = len(orjson.dumps(given)) // 4
        completion_tokens = len(answer.pieces)
        usage: dict[str, Any] = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": behavior.cached_tokens or 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        }
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        text = answer.text_of("content") or ""
        message = {
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response: dict[str, Any] = {
            "id": f"resp_{uuid.uuid4().hex[:24]}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model", "qwen3-fake"),
            "output": [message],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage if behavior.usage else None,
        }
        if behavior.timings != "off":
            response["timings"] = _timings(behavior, prompt_tokens, completion_tokens)
        if not body.get("stream"):
            return _json(response)
        every = _chunk_timings(behavior, body)
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        started.pop("timings", None)
        events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": started})]
        for _, piece in answer.pieces:
            delta = {"item_id": message_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}
            events.append(("response.output_text.delta", delta))
        events.append(("response.completed", {"response": response}))
        numbered = []
        for number, (kind, event) in enumerate(events):
            payload = {"type": kind, "sequence_number": number, **event}
            if every:
                payload["timings"] = _timings(behavior, prompt_tokens, number)
            numbered.append((kind, payload))
        return await self._sse(request, behavior, numbered, done=False)

    async def _sse(
        self,
        request: web.Request,
        behavior: Behavior,
        events: list[tuple[str | None, dict[str, Any]]],
        *,
        done: bool,
    ) -> web.StreamResponse:
        """Stream ``events`` (an ``event:`` name, or None, and the data), cut or paced as told."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        newline = b"\r\n" if behavior.crlf else b"\n"
        for position, (kind, payload) in enumerate(events):
            if behavior.cut_after is not None and position == behavior.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if behavior.pace:
                await asyncio.sleep(behavior.pace)
            name = b"event: " + kind.encode() + newline if kind is not None else b""
            await response.write(name + b"data: " + orjson.dumps(payload) + newline + newline)
        if done:
            await response.write(b"data: [DONE]" + newline + newline)
        await response.write_eof()
        return response

    async def _last_request(self, request: web.Request) -> web.Response:
        return web.Response(body=self.last_request, content_type="application/json")

    async def _last_headers(self, request: web.Request) -> web.Response:
        return _json(self.last_headers)

    async def _streams_cut(self, request: web.Request) -> web.Response:
        return _json({"streams_cut": self.streams_cut})

    async def _stats(self, request: web.Request) -> web.Response:
        """What this replica served: chat requests, their prompt tokens, those found in its KV cache."""
        return _json(
            {
                "chat_requests": self.chat_requests,
                "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "kv_blocks": len(self._kv) if self._kv is not None else 0,
            }
        )

    async def _counted(self, body: dict[str, Any]) -> tuple[int, int | None]:
        """The prompt's tokens, and those the prefix KV cache held (None without one)."""
        if self._kv is None:
            return await self._prompt.count(body), None
        prompt = hashed_prompt(body, ())
        counts = await self._counter.count(body, prompt, range(len(prompt.blocks)))
        boundaries = []
        for block, prefix_hash in enumerate(prompt.prefix_hashes):
            if block not in counts.cumulative:  # a block the template leaves out: nothing past it is shared
                break
            boundaries.append((prefix_hash, counts.cumulative[block]))
        salt = body.get("cache_salt")
        cached = self._kv.serve(boundaries, salt if isinstance(salt, str) else None)
        total = counts.total if counts.total is not None else await self._prompt.count(body)
        return total, cached

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.last_request = raw
        self.last_headers = {name.lower(): _printable(value) for name, value in request.headers.items()}
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise FakeRequestError("the body is not a JSON object")
            check_chat_shape(body, DEFAULT_LIMITS)  # what vLLM's request model refuses, refused alike
            behavior = requested_behavior(request.headers.get("x-fake-behavior"), body)
            answer = plan_answer(body, behavior)
        except (ValueError, TypeError) as exc:
            return _bad_request(exc)
        if behavior.stall:
            await asyncio.sleep(behavior.stall)
        if behavior.status >= 400:
            return _error(behavior.status, f"fake upstream told to fail with {behavior.status}")
        try:
            prompt_tokens, kv_cached = await self._counted(body)
        except TokenCountError as exc:  # vLLM answers a prompt its template cannot render with a 400
            return _bad_request(exc)
        if behavior.cached_tokens is None and kv_cached is not None:
            behavior = replace(behavior, cached_tokens=kv_cached)
        self.chat_requests += 1
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += kv_cached or 0
        model = body.get("model", "qwen3-fake")
        if body.get("stream"):
            headers = {"content-type": "text/event-stream", **_miss_header(behavior)}
            response = web.StreamResponse(status=behavior.status, headers=headers)
            await response.prepare(request)
            try:
                await self._stream(request, response, body, behavior, answer, model, prompt_tokens)
            except ConnectionResetError:  # the reader left: stop generating, as an engine does
                self.streams_cut += 1
            return response
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": answer.message(), **answer.finishing_choice()}],
        }
        if behavior.usage:
            payload["usage"] = _usage(prompt_tokens, len(answer.pieces), behavior.cached_tokens)
        if behavior.timings != "off":
            payload["timings"] = _timings(behavior, prompt_tokens, len(answer.pieces))
        response = _json(payload, status=behavior.status)
        response.headers.update(_miss_header(behavior))
        if behavior.set_cookie:
            response.set_cookie("upstream-session", uuid.uuid4().hex)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        body: dict[str, Any],
        behavior: Behavior,
        answer: Answer,
        model: str,
        prompt_tokens: int,
    ) -> None:
        newline = b"\r\n" if behavior.crlf else b"\n"
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage = _usage(prompt_tokens, len(answer.pieces), behavior.cached_tokens)

        every = _chunk_timings(behavior, body)

        def frame(
            choices: list[dict[str, Any]], with_usage: dict[str, Any] | None = None, *, last: bool = False
        ) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage or behavior.chunk_usage:
                chunk["usage"] = with_usage
            if every or (last and behavior.timings != "off"):
                chunk["timings"] = _timings(behavior, prompt_tokens, len(answer.pieces))
            return b"data: " + orjson.dumps(chunk) + newline + newline

        per_chunk = usage if behavior.chunk_usage else None
        await response.write(
            frame([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], per_chunk)
        )
        if behavior.big_event:
            big = {"content": "x" * behavior.big_event}
            await response.write(frame([{"index": 0, "delta": big, "finish_reason": None}], per_chunk))
        call_opened = False
        for i in range(len(answer.pieces)):
            if behavior.cut_after is not None and i == behavior.cut_after:
                assert request.transport is not None
                request.transport.abort()  # the client sees a broken chunked body
                return
            if behavior.pace:
                await asyncio.sleep(behavior.pace)
            if answer.pieces[i][0] == "arguments" and not call_opened:
                call_opened = True
                await response.write(frame([{"index": 0, "delta": answer.call_opening(), "finish_reason": None}]))
            await response.write(frame([{"index": 0, "delta": answer.delta(i), "finish_reason": None}], per_chunk))
        if behavior.error_frame:
            error = {"error": {"message": "fake upstream error frame", "type": "server_error", "code": None}}
            await response.write(b"data: " + orjson.dumps(error) + newline + newline)
            await response.write_eof()
            return
        await response.write(frame([{"index": 0, "delta": {}, **answer.finishing_choice()}], per_chunk, last=True))
        if include_usage and behavior.usage:
            await response.write(frame([], usage))
        await response.write(b"data: [DONE]" + newline + newline)
        await response.write_eof()


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


def _printable(value: str) -> str:
    """A header value as JSON can carry it: aiohttp keeps bytes that are not UTF-8 as surrogates."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"message": message, "type": "server_error", "param": None, "code": None}}, status)


def _bad_request(error: Exception) -> web.Response:
    """vLLM's 400: its error shape, the parameter named when the body's shape is at fault."""
    param = error.param if isinstance(error, ShapeError) else None
    message = f"fake upstream: bad request: {error}"
    return _json({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}, 400)


def _miss_header(behavior: Behavior) -> dict[str, str]:
    """An upstream cachegate's diagnosis, of its own scope (SPEC §14): never for the client to see."""
    return {"x-cachegate-cache-miss": "prefix_changed;block=1"} if behavior.miss_header else {}


async def start_fake_upstream(
    counter: TokenCounter, host: str, port: int, *, kv_cache_blocks: int = 0
) -> tuple[web.AppRunner, int]:
    """Start the fake upstream on ``host:port`` (port 0 picks a free one); returns the runner and the port.

    ``kv_cache_blocks`` > 0 gives it a prefix KV cache of that many 16-token blocks (one replica's)."""
    runner = web.AppRunner(FakeUpstream(counter, kv_cache_blocks).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server else ()
    return runner, sockets[0].getsockname()[1] if sockets else port
