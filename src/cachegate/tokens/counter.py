"""Exact token counts from the model's tokenizer and its chat template (SPEC §5).

A count is one rendering and one tokenization. ``ChatTokenCounter`` runs a chain of methods over
one ``CountRequest`` (``tally.py``), each answering or declining:

1. resumed (``resume.py``): a grown conversation, laid out and counted only from where the count
   of an earlier request of it left a checkpoint, so its cost follows the new messages;
2. native layout (``native/``): a template reproduced in Python writes the rendering and the
   block ends in one pass, for the request shapes agent traffic has;
3. sentinel (``sentinel.py``): block ends found by marks in a jinja rendering, for anything else.

The text is tokenized piece by piece, so the pieces of a prefix seen before are not tokenized
again (``pieces.py``); the cumulative count at a block is the number of leading tokens that end
at or before its boundary (``tally.py``).

The boundary of block b is the end of its text; for a tool, the end of its definition as the
template writes it — the closing brace of its JSON, found after its mark (``conversation.tool_end``),
so that a tool breakpoint's prefix holds the whole tool. A block without text of its own (an image, an
empty or whitespace-only text, a header-only message) is not marked; its boundary is that of the block before
it. And a cached prefix must be determined by blocks 0..b alone: when the template renders the
text of a later block before the end of b (Qwen-style templates put the system message before
the tool definitions; Llama 3.1 puts the tools inside the first user message), the boundary is
the furthest end of a block ≤ b that precedes every later block's text (possibly 0). For
templates that keep blocks in order this is just the end of block b. The same rule covers a
template that renders a block twice.

A template may leave out blocks (tools it does not support, roles it ignores, a system prompt
it writes only before a last user message): they bound nothing, and an asked-for one comes
back ``dropped``, with no count. Whatever cannot be trusted fails with ``TokenCountError``
rather than bill a number that may be wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jinja2

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts, TokenCountError, TokenizerLoadError
from cachegate.tokens.native import LaidOutPrompt, native_template
from cachegate.tokens.pieces import DEFAULT_PIECE_MEMO_BYTES, PieceCounter, PieceTokenizer
from cachegate.tokens.resume import DEFAULT_CHECKPOINT_BYTES, CheckpointStore, Resumer
from cachegate.tokens.sentinel import SentinelMethod
from cachegate.tokens.tally import CountOptions, CountRequest, prefix_boundaries, tally
from cachegate.tokens.template import ChatTemplate, Unsupported, read_variables

# Bump when a change to the preparation or counting rules changes counts: the version is part
# of the cache scope, so old entries are then never read with new counts.
# 2: tools marked at their description where the template compares schema strings;
# 3: a tool's block ends after the closing brace of its JSON, not at its last string.
_COUNTING_RULES = "3"


@dataclass(frozen=True, slots=True)
class CounterMemory:
    """What a counter may keep between counts, in bytes. Neither changes a count, so neither is
    part of ``tokenizer_version``; 0 keeps nothing."""

    pieces: int = DEFAULT_PIECE_MEMO_BYTES
    """Tokenized pieces (``pieces.py``)."""
    checkpoints: int = DEFAULT_CHECKPOINT_BYTES
    """Where counts of grown conversations resume (``resume.py``)."""


DEFAULT_MEMORY = CounterMemory()


@dataclass(frozen=True, slots=True)
class MarkedRendering:
    """The prompt as the upstream sees it, and where each asked-for block ends in it."""

    text: str
    boundaries: Mapping[int, int]  # block index -> character offset in ``text`` where its prefix ends


class ChatTokenCounter:
    """A ``TokenCounter`` over a tokenizer's pieces and a jinja chat template, in process.

    ``memory`` bounds what it keeps between counts.
    """

    def __init__(
        self,
        pieces: PieceTokenizer,
        chat_template: str,
        special_tokens: Mapping[str, Any],
        options: CountOptions | None = None,
        memory: CounterMemory = DEFAULT_MEMORY,
    ) -> None:
        self._options = options or CountOptions()
        if self._options.image_tokens < 0:
            raise TokenizerLoadError("image_tokens must not be negative")
        self._pieces = PieceCounter(pieces, memory.pieces)
        self._native = native_template(chat_template)
        try:
            self._template = ChatTemplate(
                chat_template, {**special_tokens, **self._options.template_kwargs}, self._native
            )
        except jinja2.TemplateError as exc:
            raise TokenizerLoadError(f"chat template could not be compiled: {exc}") from exc
        except ValueError as exc:
            raise TokenizerLoadError(str(exc)) from exc
        # The chain: resume (needs a native layout to resume and cuts to resume the tokens at),
        # then the native layout, then the sentinel method, which takes whatever is left.
        self._resumer = (
            Resumer(
                self._native,
                self._template,
                self._pieces,
                self._options,
                CheckpointStore(memory.checkpoints),
                pieces.cut_reach,
            )
            if self._native is not None and pieces.cut_pattern is not None and memory.checkpoints > 0
            else None
        )
        self._sentinel = SentinelMethod(self._template, self._options.content_join)
        self._version = _version(pieces.identity, chat_template, special_tokens, self._options)
        fixed = special_tokens.keys() | self._options.template_kwargs.keys()
        self._template_variables = read_variables(chat_template) - fixed
        self._executor: ThreadPoolExecutor | None = None

    @property
    def tokenizer_version(self) -> str:
        return self._version

    @property
    def template_variables(self) -> frozenset[str]:
        return self._template_variables

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        """Count in a worker thread, so the event loop keeps serving while we render and tokenize.

        One thread per counter: new pieces are encoded in a batch that the tokenizer spreads
        over the cores itself, with the GIL released (``pieces.py``).
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-tokens")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.count_blocking, body, prompt, tuple(blocks))

    async def aclose(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False, cancel_futures=True)

    def count_blocking(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        """``count`` without the thread hop, for callers that are already off the event loop."""
        try:
            return self._count(body, prompt, blocks)
        except TokenCountError:
            raise
        except Exception as exc:
            # The port promises TokenCountError, which callers degrade on: a request is never
            # failed because its tokens could not be counted (SPEC §11).
            raise TokenCountError(f"unexpected {type(exc).__name__} while counting") from exc

    def count_texts_blocking(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text alone: no chat template, no special tokens (the raw
        segments of the tokenizer service's ``/v1/tokenize``). Blocking: call it off the event loop."""
        return self._pieces.tokenizer.count_texts(texts)

    async def count_texts(self, texts: Sequence[str]) -> list[int]:
        """``count_texts_blocking`` on the counter's thread (``TextCounter``)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cachegate-tokens")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.count_texts_blocking, tuple(texts))
        except Exception as exc:
            raise TokenCountError(f"unexpected {type(exc).__name__} while counting texts") from exc

    def _count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        request = CountRequest.of(body, prompt, blocks, resumable=self._resumer is not None)
        if self._resumer is not None:
            resumed = self._resumer.resume(request)
            if resumed is not None:
                return resumed
        layout = self._laid_out(request)
        dropped = request.asked & layout.dropped
        counted = tally(
            self._pieces,
            layout,
            prefix_boundaries(layout.ends, request.asked - dropped),
            image_tokens=self._options.image_tokens,
            dropped=dropped,
        )
        if self._resumer is not None:
            self._resumer.keep(request, counted)
        return PromptCounts(
            cumulative=counted.cumulative,
            total=counted.total(self._options.image_tokens),
            dropped=dropped,
            method="sentinel" if layout.marked else "layout",
        )

    def render(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> MarkedRendering:
        """The clean rendering and, for each asked-for block, the offset where its prefix ends."""
        request = CountRequest.of(body, prompt, blocks, resumable=False)
        layout = self._laid_out(request, keep=False)
        boundaries = prefix_boundaries(layout.ends, request.asked - layout.dropped)
        return MarkedRendering(text=layout.text, boundaries=boundaries)

    def _laid_out(self, request: CountRequest, keep: bool = True) -> LaidOutPrompt:
        """The rendering and where each block's text ends in it: by the native layout, or, where
        it declines, by the sentinel method."""
        if self._native is not None:
            variables = self._template.variables(request.variables)
            try:
                return self._native.lay_out(
                    request.body,
                    request.prompt.blocks,
                    self._options.content_join,
                    variables,
                    keep=request.keep if keep else None,
                )
            except Unsupported:
                pass
        return self._sentinel.lay_out(request)


def _version(
    tokenizer_identity: bytes,
    chat_template: str,
    special_tokens: Mapping[str, Any],
    options: CountOptions,
) -> str:
    digest = hashlib.sha256()
    settings = {
        "rules": _COUNTING_RULES,
        "special_tokens": special_tokens,
        "content_join": options.content_join,
        "image_tokens": options.image_tokens,
        "template_kwargs": options.template_kwargs,
    }
    try:
        canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except TypeError as exc:
        raise TokenizerLoadError(f"template kwargs must be JSON values: {exc}") from exc
    for chunk in (tokenizer_identity, chat_template.encode(), canonical.encode()):
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]
