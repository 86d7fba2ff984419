"""The tokenizer service (SPEC §5): one tokenizer fleet counting for many gateways.

``cachegate tokenizer serve`` runs this ASGI app over the configuration's tokenizers. Routes:

``GET /v1/models``
    ``{"models": [{"alias", "hf_repo", "tokenizer_version"}]}``.
``POST /v1/tokenize`` ``{"virtual_model", "segments": [text, …]}``
    The raw token count of each text (no chat template, no special tokens), their running sums
    and total: ``{"virtual_model", "tokenizer_version", "segment_counts", "cumulative", "total"}``.
``POST /v1/render`` ``{"virtual_model", "request": <chat completions body>, "blocks"?: [{"block", "prefix_hash"}]}``
    The exact, chat-templated count of the request, as the in-process counter takes it:
    ``{"virtual_model", "tokenizer_version", "total", "breakpoints": [{"block", "cumulative"}],
    "dropped": [block, …]}`` — a block the template leaves out has no count. Without ``blocks``,
    every breakpoint the request's markers make is counted. A gateway sends ``blocks`` — the
    block indexes it needs with its prefix hash after each (hex) — because it counts the
    forwarded body, whose markers are already stripped. Both sides split the request
    into blocks with the same ``parse_prompt``; the hashes prove they agree, so a service running
    another cachegate version (another block layout) is refused with 422 ``BLOCK_MISMATCH``
    instead of answering counts for other blocks.
``GET /healthz``

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 413 for a body
over the limit, 400 ``invalid_json`` / ``invalid_request`` / ``invalid_cache_control``, 422
``UNMAPPED_MODEL`` for a model the service does not serve, 422 ``COUNT_UNAVAILABLE`` when the
request cannot be counted (the template refuses it, …).

Plain ASGI, like the gateway: the routes are few and a framework is not installed. Tokenizing
holds the GIL, so it never runs on the event loop: renders run in the counter's own worker
thread, raw segments in one worker thread of the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson
from pydantic import ValidationError

from cachegate.asgi import JSON_HEADERS, ClientGone, Receive, Refusal, Scope, Send, read_body, send_bytes
from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt, TtlTier
from cachegate.tokens.base import TokenCounter, TokenCountError
from cachegate.tokens.wire import (
    BlockCount,
    BlockToCount,
    ModelsAnswer,
    RenderAnswer,
    RenderRequest,
    ServedModelInfo,
    TokenizeAnswer,
    TokenizeRequest,
    WireMessage,
)

DEFAULT_BODY_LIMIT = 32 * 1024 * 1024

# The gateway has already enforced its own TTL policy; here a marker only says where a block ends.
_ANY_TTL = TtlPolicy(frozenset(TtlTier))


class ServedCounter(TokenCounter, Protocol):
    """A counter that can also count raw text: ``ChatTokenCounter``."""

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text alone, without chat template or special tokens."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A tokenizer the service answers for; ``source`` (the builtin's name or the model folder)
    is what ``/v1/models`` reports as ``hf_repo``."""

    counter: ServedCounter
    source: str


_Request = TypeVar("_Request", bound=WireMessage)


class TokenizerService:
    """The ASGI app. It does not own the counters: whoever built them closes them."""

    def __init__(self, models: Mapping[str, ServedModel], body_limit: int = DEFAULT_BODY_LIMIT) -> None:
        self._models = dict(models)
        self._body_limit = body_limit
        self._segments_executor: ThreadPoolExecutor | None = None
        self._catalog = orjson.dumps(
            ModelsAnswer(
                models=[
                    ServedModelInfo(
                        alias=alias, hf_repo=model.source, tokenizer_version=model.counter.tokenizer_version
                    )
                    for alias, model in sorted(self._models.items())
                ]
            ).model_dump()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._segments_executor is not None:
                    self._segments_executor.shutdown(wait=False, cancel_futures=True)
                    self._segments_executor = None
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope["method"], scope["path"])
        try:
            if route == ("GET", "/healthz"):
                answer: bytes = b'{"status":"ok"}'
            elif route == ("GET", "/v1/models"):
                answer = self._catalog
            elif route == ("POST", "/v1/tokenize"):
                answer = await self._tokenize(await self._read(receive, TokenizeRequest))
            elif route == ("POST", "/v1/render"):
                answer = await self._render(await self._read(receive, RenderRequest))
            elif scope["path"] in _ROUTES:
                raise Refusal(405, f"{scope['method']} is not allowed on {scope['path']}", "method_not_allowed")
            else:
                raise Refusal(404, f"no route for {scope['method']} {scope['path']}", "not_found")
        except Refusal as refusal:
            await refusal.send(send)
            return
        except ClientGone:
            return
        await send_bytes(send, 200, JSON_HEADERS, answer)

    async def _read(self, receive: Receive, request_type: type[_Request]) -> _Request:
        raw = await read_body(receive, self._body_limit)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refusal(400, "request body is not valid JSON", "invalid_json") from exc
        try:
            return request_type.model_validate(payload)
        except ValidationError as exc:
            # Only the place and the rule, never the input: it may be prompt text.
            error = exc.errors(include_url=False, include_input=False)[0]
            param = ".".join(str(part) for part in error["loc"]) or None
            raise Refusal(400, f"{param or 'request body'}: {error['msg']}", "invalid_request", param) from exc

    def _served(self, alias: str) -> ServedModel:
        try:
            return self._models[alias]
        except KeyError:
            raise Refusal(
                422, f"the tokenizer service does not serve model {alias!r}", "UNMAPPED_MODEL", "virtual_model"
            ) from None

    async def _tokenize(self, request: TokenizeRequest) -> bytes:
        served = self._served(request.virtual_model)
        if self._segments_executor is None:
            self._segments_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-segments")
        loop = asyncio.get_running_loop()
        count_texts = served.counter.count_texts_blocking
        counts = await loop.run_in_executor(self._segments_executor, count_texts, request.segments)
        cumulative: list[int] = []
        running = 0
        for count in counts:
            running += count
            cumulative.append(running)
        answer = TokenizeAnswer(
            virtual_model=request.virtual_model,
            tokenizer_version=served.counter.tokenizer_version,
            segment_counts=counts,
            cumulative=cumulative,
            total=running,
        )
        return orjson.dumps(answer.model_dump())

    async def _render(self, request: RenderRequest) -> bytes:
        served = self._served(request.virtual_model)
        try:
            prompt = parse_prompt(request.request, _ANY_TTL)
        except MarkerError as exc:
            raise Refusal(400, exc.message, "invalid_cache_control", f"request.{exc.param}") from exc
        if request.blocks is None:
            blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
        else:
            blocks = _checked_blocks(prompt, request.blocks)
        try:
            counts = await served.counter.count(request.request, prompt, blocks)
        except TokenCountError as exc:
            raise Refusal(422, f"the request cannot be counted: {exc}", "COUNT_UNAVAILABLE") from exc
        answer = RenderAnswer(
            virtual_model=request.virtual_model,
            tokenizer_version=served.counter.tokenizer_version,
            total=counts.total,
            breakpoints=[
                BlockCount(block=block, cumulative=counts.cumulative[block])
                for block in blocks
                if block in counts.cumulative
            ],
            dropped=sorted(counts.dropped),
        )
        return orjson.dumps(answer.model_dump())


_ROUTES = frozenset({"/healthz", "/v1/models", "/v1/tokenize", "/v1/render"})


def _checked_blocks(prompt: ParsedPrompt, asked: Sequence[BlockToCount]) -> list[int]:
    """The asked-for block indexes, once each proves to be the block the gateway means."""
    for item in asked:
        if item.block >= len(prompt.prefix_hashes) or prompt.prefix_hashes[item.block].hex() != item.prefix_hash:
            raise Refusal(
                422,
                f"block {item.block} of this request is not the gateway's block {item.block}: the gateway and"
                " the tokenizer service must run the same cachegate version",
                "BLOCK_MISMATCH",
                "blocks",
            )
    return [item.block for item in asked]
