"""Exact token counts from the model's tokenizer and its chat template (SPEC §5).

The counts at the breakpoints come from one rendering and one tokenization (the sentinel
method): the end of every block that has text is marked with a unique string of characters
the prompt does not hold, the marked prompt is rendered, the marks are found and removed
(their character offsets are the block ends), and the rendering without marks must give
exactly the text that is left. The clean text is tokenized once — piece by piece, so the
pieces of a prefix seen before are not tokenized again (``pieces.py``); the cumulative count
at a block is the number of leading tokens that end at or before its boundary. Templates are
rendered by jinja, or by their reproduction in Python where there is one (``native/``); for
the request shapes agent traffic has, a native template writes the rendering and the block
ends in one pass, with the same result and no marked rendering (``native/plain.py``) — and a
grown conversation only from where the count of an earlier request of it left a checkpoint
(``resume.py``), so that its cost follows the new messages, not the conversation's length.

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
back ``dropped``, with no count. Whenever the marks cannot be trusted — the template renders
differently because of a mark, or fails — the count fails with ``TokenCountError`` rather than
bill a number that may be wrong.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jinja2

from cachegate.core.blocks import parse_prompt
from cachegate.core.errors import MarkerError
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts, TokenCountError
from cachegate.tokens.conversation import (
    ChatPreparation,
    PreparedChat,
    describe_blocks,
    prepare_chat,
)
from cachegate.tokens.marks import Delimiters, mark, mark_delimiters, without_marks
from cachegate.tokens.native import LaidOutPrompt, native_template
from cachegate.tokens.pieces import DEFAULT_PIECE_MEMO_BYTES, PieceCounter, PieceCounts, PieceTokenizer
from cachegate.tokens.resume import DEFAULT_CHECKPOINT_BYTES, Checkpoint, CheckpointStore, checkpoint_after
from cachegate.tokens.template import ChatTemplate, Unsupported, read_variables, rendering_key

# Bump when a change to the preparation or counting rules changes counts: the version is part
# of the cache scope, so old entries are then never read with new counts.
# 2: tools marked at their description where the template compares schema strings;
# 3: a tool's block ends after the closing brace of its JSON, not at its last string.
_COUNTING_RULES = "3"

# Where marks go (before trailing whitespace, tools at their prose only), in the order tried
# unless the template's probe puts another first (``_placement_order``).
_PLACEMENTS = ((False, False), (True, False), (False, True), (True, True))
Placement = tuple[bool, bool]

# A conversation with what templates treat specially: a system prompt, text with trailing
# whitespace, a tool whose schema has a required parameter, a tool call and its result.
_PROBE: dict[str, Any] = {
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather of a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "The city."}},
                    "required": ["city"],
                },
            },
        }
    ],
    "messages": [
        {"role": "system", "content": "You answer briefly.  "},
        {"role": "user", "content": "Weather in Paris?  "},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abcdefghi",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "Sunny.  "},
        {"role": "user", "content": "Thanks.  "},
    ],
}

# Template complaints go into logs: short, and they are the template's words, not the prompt's.
_REASON_LIMIT = 200


class TokenizerLoadError(Exception):
    """A tokenizer or its chat template could not be loaded; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class CountOptions:
    """The options that change counts; all of them are part of ``tokenizer_version``.

    ``content_join`` must match the upstream's join of multi-part text (vLLM: ``"\\n"``);
    ``image_tokens`` is what one image costs upstream; ``template_kwargs`` are extra template
    variables (e.g. ``enable_thinking``, a pinned ``date_string``) the upstream renders with.
    """

    content_join: str = "\n"
    image_tokens: int = 0
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)


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
        self._cut_reach = pieces.cut_reach
        self._native = native_template(chat_template)
        # Resuming needs a native layout to resume and cuts to resume the tokens at.
        resumable = self._native is not None and pieces.cut_pattern is not None and memory.checkpoints > 0
        self._checkpoints = CheckpointStore(memory.checkpoints) if resumable else None
        try:
            self._template = ChatTemplate(
                chat_template, {**special_tokens, **self._options.template_kwargs}, self._native
            )
        except jinja2.TemplateError as exc:
            raise TokenizerLoadError(f"chat template could not be compiled: {exc}") from exc
        except ValueError as exc:
            raise TokenizerLoadError(str(exc)) from exc
        self._version = _version(pieces.identity, chat_template, special_tokens, self._options)
        fixed = special_tokens.keys() | self._options.template_kwargs.keys()
        self._template_variables = read_variables(chat_template) - fixed
        self._executor: ThreadPoolExecutor | None = None
        self._placements = self._placement_order()

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
        asked = _checked_blocks(prompt, blocks)
        unhashed = rendering_key(body) if self._checkpoints is not None else None
        if unhashed is not None:
            resumed = self._resumed_count(body, prompt, asked, unhashed)
            if resumed is not None:
                return resumed
        keep = _last_message(body)
        layout, boundaries = self._laid_out(body, prompt, asked, keep)
        counted = self._count_pieces(layout.text, boundaries)
        cumulative = self._cumulative(boundaries, counted, layout.images)
        dropped = frozenset(asked & layout.dropped)
        if unhashed is not None:
            self._keep_checkpoint(prompt, layout, layout.text, counted, layout.ends, cumulative, dropped, 0, unhashed)
        images = len(layout.images)
        return PromptCounts(
            cumulative=cumulative,
            total=counted.total + self._options.image_tokens * images,
            dropped=dropped,
            method="sentinel" if layout.marked else "layout",
        )

    def _resumed_count(
        self, body: Mapping[str, Any], prompt: ParsedPrompt, asked: set[int], unhashed: bytes
    ) -> PromptCounts | None:
        """The count from the deepest checkpoint of this conversation that fits, or None to count from the start."""
        assert self._checkpoints is not None
        for block, checkpoint in self._checkpoints.deepest(prompt.prefix_hashes, unhashed):
            counts = self._count_since(body, prompt, asked, unhashed, block, checkpoint)
            if counts is not None:
                return counts
        return None

    def _count_since(
        self,
        body: Mapping[str, Any],
        prompt: ParsedPrompt,
        asked: set[int],
        unhashed: bytes,
        block: int,
        checkpoint: Checkpoint,
    ) -> PromptCounts | None:
        assert self._native is not None
        blocks = prompt.blocks
        if block + 1 < len(blocks) and blocks[block + 1].message == blocks[block].message:
            return None  # the message goes on here: the rendering after it may differ
        earlier = {asked_block for asked_block in asked if asked_block <= block}
        if not earlier <= checkpoint.counts.keys() | checkpoint.dropped:
            return None
        later = asked - earlier
        try:
            layout = self._native.lay_out(
                body,
                blocks,
                self._options.content_join,
                self._template.variables(_request_variables(body)),
                since=checkpoint.resumption,
                keep=_last_message(body),
            )
        except Unsupported:
            return None
        dropped = frozenset(later & layout.dropped | earlier & checkpoint.dropped)
        ends = layout.ends if checkpoint.last_end is None else [checkpoint.last_end, *layout.ends]
        boundaries = _prefix_boundaries(ends, later - dropped)
        if any(offset < checkpoint.cut for offset in boundaries.values()):
            return None  # a block with no text of its own right after the checkpoint: its count lies before the cut
        text = checkpoint.head + layout.text
        counted = self._count_pieces(text, boundaries, checkpoint.cut, checkpoint.tokens_before_cut)
        cumulative = self._cumulative(boundaries, counted, layout.images, checkpoint.images)
        cumulative.update((asked_block, checkpoint.counts[asked_block]) for asked_block in earlier - dropped)
        self._keep_checkpoint(prompt, layout, text, counted, ends, cumulative, dropped, checkpoint.images, unhashed)
        images = checkpoint.images + len(layout.images)
        return PromptCounts(
            cumulative=cumulative,
            total=counted.total + self._options.image_tokens * images,
            dropped=dropped,
            method="resumed",
        )

    def _count_pieces(
        self, text: str, boundaries: dict[int, int], start: int = 0, tokens_before: int = 0
    ) -> PieceCounts:
        try:
            return self._pieces.count_from(text, set(boundaries.values()), start, tokens_before)
        except Exception as exc:
            raise TokenCountError(f"tokenization failed: {type(exc).__name__}") from exc

    def _cumulative(
        self, boundaries: dict[int, int], counted: PieceCounts, images: list[int], images_before: int = 0
    ) -> dict[int, int]:
        image_tokens = self._options.image_tokens
        at_offset = counted.at_offset
        return {
            # An image costs at every boundary after it.
            block: at_offset[offset] + image_tokens * (images_before + bisect.bisect_right(images, block))
            for block, offset in boundaries.items()
        }

    def _keep_checkpoint(
        self,
        prompt: ParsedPrompt,
        layout: LaidOutPrompt,
        text: str,
        counted: PieceCounts,
        ends: Sequence[tuple[int, int]],
        cumulative: dict[int, int],
        dropped: frozenset[int],
        images_before: int,
        unhashed: bytes,
    ) -> None:
        assert self._checkpoints is not None
        made = checkpoint_after(
            prompt.blocks, layout, text, counted, ends, cumulative, dropped, images_before, unhashed, self._cut_reach
        )
        if made is not None:
            block, checkpoint = made
            self._checkpoints.keep(prompt.prefix_hashes[block], checkpoint)

    def render(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> MarkedRendering:
        """The clean rendering and, for each asked-for block, the offset where its prefix ends."""
        layout, boundaries = self._laid_out(body, prompt, _checked_blocks(prompt, blocks))
        return MarkedRendering(text=layout.text, boundaries=boundaries)

    def _laid_out(
        self, body: Mapping[str, Any], prompt: ParsedPrompt, asked: set[int], keep: int | None = None
    ) -> tuple[LaidOutPrompt, dict[int, int]]:
        """The rendering, and the offset where the prefix of each asked-for block it writes ends in it."""
        request_variables = _request_variables(body)
        layout = self._native_layout(body, prompt, request_variables, keep)
        if layout is None:  # the sentinel method counts what no native layout covers
            layout = self._sentinel_layout(body, prompt, asked, request_variables)
        return layout, _prefix_boundaries(layout.ends, asked - layout.dropped)

    def _native_layout(
        self,
        body: Mapping[str, Any],
        prompt: ParsedPrompt,
        request_variables: Mapping[str, Any] | None,
        keep: int | None,
    ) -> LaidOutPrompt | None:
        if self._native is None:
            return None
        variables = self._template.variables(request_variables)
        try:
            return self._native.lay_out(body, prompt.blocks, self._options.content_join, variables, keep=keep)
        except Unsupported:
            return None

    def _sentinel_layout(
        self,
        body: Mapping[str, Any],
        prompt: ParsedPrompt,
        asked: set[int],
        request_variables: Mapping[str, Any] | None,
    ) -> LaidOutPrompt:
        """Render with and without marks at the ends of the blocks' texts; the marks give the ends."""
        traits = describe_blocks(body, prompt.blocks)
        images = [block for block, trait in enumerate(traits) if trait.is_image]
        marked = [block for block, trait in enumerate(traits) if trait.has_text]
        preparation = ChatPreparation(body, self._options.content_join)
        clean = self._render(preparation.chat(), request_variables)
        if not marked:
            return LaidOutPrompt(text=clean, ends=[], dropped=frozenset(), images=images, marked=True)
        delimiters = mark_delimiters(clean)
        if delimiters is None:
            raise TokenCountError("the prompt contains every character boundary marks can be made of")
        marks = {prompt.blocks[block]: mark(delimiters, n) for n, block in enumerate(marked)}
        needed = {n for n, block in enumerate(marked) if block in asked}
        found: list[tuple[int, int]] | str = "no placement of the marks was tried"
        trusted: tuple[PreparedChat, list[tuple[int, int]]] | None = None
        tried: list[PreparedChat] = []
        # In the order the template's probe chose: the ends of the blocks' texts, or for
        # templates that trim text or compare schema strings, placements those cannot see. The
        # first that keeps every asked-for mark, else the first that renders unchanged (the
        # template leaves those blocks out, whatever the placement).
        for before_trailing_space, prose_only in self._placements:
            chat = preparation.chat(marks, before_trailing_space, prose_only)
            if chat in tried:
                continue
            tried.append(chat)
            found = self._find_marks(chat, request_variables, clean, delimiters)
            if isinstance(found, str):
                continue
            if trusted is None or needed <= {n for n, _ in found}:
                trusted = chat, found
            if needed <= {n for n, _ in found}:
                break
        if trusted is None:
            raise TokenCountError(str(found))
        chat, found = trusted
        blocks = prompt.blocks
        ends = [(marked[n], chat.block_end(blocks[marked[n]], clean, offset)) for n, offset in found]
        written = {block for block, _ in ends}
        dropped = frozenset(block for block in marked if block not in written)
        return LaidOutPrompt(text=clean, ends=ends, dropped=dropped, images=images, marked=True)

    def _placement_order(self) -> tuple[Placement, ...]:
        """The placements in the order to try them, the first that works for this template on the probe first.

        A template that trims text or compares schema strings does so on every request: trying
        the placement it needs first saves a rendering or two a request. The order depends on
        the template and options alone (both in ``tokenizer_version``), so counts never depend
        on which requests came before.
        """
        try:
            prompt = parse_prompt(_PROBE, TtlPolicy.default_policy())
            traits = describe_blocks(_PROBE, prompt.blocks)
            clean = self._render(prepare_chat(_PROBE, self._options.content_join), None)
        except (TokenCountError, MarkerError):
            return _PLACEMENTS  # the template refuses the probe: keep the plain order
        marked = [block for block, trait in enumerate(traits) if trait.has_text]
        delimiters = mark_delimiters(clean)
        if delimiters is None:  # a template that writes every mark character itself
            return _PLACEMENTS
        marks = {prompt.blocks[block]: mark(delimiters, n) for n, block in enumerate(marked)}
        for placement in _PLACEMENTS:
            chat = prepare_chat(_PROBE, self._options.content_join, marks, *placement)
            if not isinstance(self._find_marks(chat, None, clean, delimiters), str):  # rendering unchanged
                return (placement, *(other for other in _PLACEMENTS if other != placement))
        return _PLACEMENTS

    def _render(self, chat: PreparedChat, request_variables: Mapping[str, Any] | None) -> str:
        try:
            return self._template.render(chat.messages, chat.tools, request_variables)
        except jinja2.TemplateError as exc:
            # raise_exception() and jinja say what the template objects to.
            reason = (exc.message or type(exc).__name__)[:_REASON_LIMIT]
            raise TokenCountError(f"chat template refused the request: {reason}") from exc
        except Exception as exc:
            raise TokenCountError(f"chat template failed: {type(exc).__name__}") from exc

    def _find_marks(
        self,
        chat: PreparedChat,
        request_variables: Mapping[str, Any] | None,
        clean: str,
        delimiters: Delimiters,
    ) -> list[tuple[int, int]] | str:
        """The marks as (mark number, offset in the unmarked text) in text order, or why they cannot be trusted.

        A template may leave out blocks (tools it does not support, roles it ignores): their
        marks are missing, and they bound nothing.
        """
        try:
            rendered = self._render(chat, request_variables)
        except TokenCountError:
            return "the chat template fails when block ends are marked"
        text, found = without_marks(rendered, delimiters)
        if text != clean:
            return "the chat template renders differently when block ends are marked"
        return found


def _checked_blocks(prompt: ParsedPrompt, blocks: Sequence[int]) -> set[int]:
    asked = set(blocks)
    if any(not 0 <= block < len(prompt.blocks) for block in asked):
        raise TokenCountError("an asked-for block is not in the prompt")
    return asked


def _request_variables(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    variables = body.get("chat_template_kwargs")
    return variables if isinstance(variables, Mapping) else None


def _last_message(body: Mapping[str, Any]) -> int | None:
    """Where a count offers to resume: after the request's last message (the next request's prefix)."""
    messages = body.get("messages")
    return len(messages) - 1 if isinstance(messages, list) and messages else None


def _prefix_boundaries(found: Sequence[tuple[int, int]], asked: set[int]) -> dict[int, int]:
    """The boundary of each asked-for block b: the furthest end of a block ≤ b's text that
    precedes the text of every block > b.

    ``found`` lists where each block's text ends, (block, offset) in text order (a template may
    render a block twice). Text is never nested, so an occurrence's text
    starts after the occurrence before it: that offset bounds from below where it may begin.
    Every matched block of the index is asked for (to check it), so this takes O(log n) a
    block rather than a pass over all occurrences.
    """
    blocks: list[int] = []
    ends: list[int] = []
    first_start: dict[int, int] = {}  # block -> the earliest its text may begin
    previous = 0
    for block, offset in found:
        blocks.append(block)
        ends.append(offset)
        first_start.setdefault(block, previous)
        previous = offset
    ordered = sorted(first_start)
    later_from = [math.inf] * (len(ordered) + 1)  # later_from[i]: where the text of ordered[i:] may begin
    for i in range(len(ordered) - 1, -1, -1):
        later_from[i] = min(later_from[i + 1], first_start[ordered[i]])
    boundaries: dict[int, int] = {}
    for block in asked:
        limit = later_from[bisect.bisect_right(ordered, block)]
        k = bisect.bisect_right(ends, limit) - 1
        while k >= 0 and blocks[k] > block:
            k -= 1
        boundaries[block] = ends[k] if k >= 0 else 0
    return boundaries


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
