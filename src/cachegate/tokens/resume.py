"""Resumed counts, the first method of the counting chain: a grown conversation is laid out and
counted from its new messages on.

The next request of an agent loop is the last one plus a turn or two. Its pieces are already
tokenized (``pieces.py``), but laying out and looking up every earlier message again still
grows with the conversation: milliseconds at a few hundred messages. A ``Checkpoint`` keeps,
for the end of a request's last message, what a later request needs to start from there:

- where the native layout may resume and what it looked ahead at (``Resumption``);
- a cut of the rendering at least ``cut_reach`` characters before that point, the tokens
  ahead of it, and the text from the cut to the point (the first piece counted again);
- the last block end before the point (``prefix_boundaries`` of later blocks needs nothing
  else), the images up to it, and the counts of the blocks its request asked for (or that
  they are left out).

It is found by the prefix hash of that message's last block, which covers the tools and every
message up to it; what no prefix hash covers (``rendering_key``: the template variables, an
empty tools list) must be the same too. So the text up to the point is the same in both
requests, provided the template's look-ahead agrees — which the template checks — and the
count from the cut on is the count of the whole rendering (``PieceCounter.count_from``).
tests/tokens/test_resumed_counts.py holds resumed counts to counts from the start over
growing, branching and rewritten conversations.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from cachegate.core.types import BlockRef
from cachegate.tokens.base import PromptCounts
from cachegate.tokens.native import NativeTemplate, Resumption
from cachegate.tokens.native.plain import message_start
from cachegate.tokens.pieces import PieceCounter
from cachegate.tokens.tally import CountOptions, CountRequest, Tally, prefix_boundaries, tally
from cachegate.tokens.template import ChatTemplate, Unsupported

DEFAULT_CHECKPOINT_BYTES = 16 << 20
"""Checkpoints kept per counter: one is about the size of a conversation's last message."""
MAX_TRIED = 3
"""Checkpoints a count tries before it counts from the start."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a later request of the same conversation may resume its count (module docstring)."""

    unhashed: bytes
    """What its request's rendering depends on that no prefix hash covers (``rendering_key``)."""
    resumption: Resumption
    cut: int
    tokens_before_cut: int
    head: str
    """The rendering from ``cut`` to ``resumption.offset``."""
    last_end: tuple[int, int] | None
    """The last (block, offset) where a block's text ends before ``resumption.offset``."""
    images: int
    """Image blocks up to the checkpoint."""
    counts: dict[int, int]
    """Block -> cumulative count (images included), for the blocks up to here its request asked for."""
    dropped: frozenset[int]
    """The blocks up to here its request asked for whose text the template leaves out."""

    @property
    def weight(self) -> int:
        """Roughly the bytes it keeps alive."""
        return 400 + len(self.head) + 100 * (len(self.counts) + len(self.dropped))


def checkpoint_after(
    blocks: Sequence[BlockRef], counted_rendering: Tally, unhashed: bytes, cut_reach: int
) -> tuple[int, Checkpoint] | None:
    """The checkpoint a layout offered (``layout.kept``), and the block it is found by."""
    layout, counted, text = counted_rendering.layout, counted_rendering.counted, counted_rendering.text
    kept = layout.kept
    if kept is None:
        return None
    point = kept.offset
    i = bisect.bisect_right(counted.starts, point - cut_reach) - 1
    if i < 0:  # no cut far enough before the point
        return None
    cut = counted.starts[i]
    start = counted.starts[0]
    last_block = message_start(blocks, kept.message + 1) - 1
    ends = counted_rendering.ends
    k = bisect.bisect_right(ends, point, key=operator.itemgetter(1)) - 1
    return last_block, Checkpoint(
        unhashed=unhashed,
        resumption=kept,
        cut=cut,
        tokens_before_cut=counted.before[i],
        head=text[cut - start : point - start],
        last_end=ends[k] if k >= 0 else None,
        images=counted_rendering.images_before + bisect.bisect_right(layout.images, last_block),
        counts={block: count for block, count in counted_rendering.cumulative.items() if block <= last_block},
        dropped=frozenset(block for block in counted_rendering.dropped if block <= last_block),
    )


class Resumer:
    """The first method of the counting chain: a grown conversation counted from its deepest checkpoint.

    Declines (None) when no checkpoint of the conversation fits; the chain then counts from the start
    and offers a checkpoint for the next request (``keep``).
    """

    def __init__(
        self,
        native: NativeTemplate,
        template: ChatTemplate,
        pieces: PieceCounter,
        options: CountOptions,
        checkpoints: CheckpointStore,
        cut_reach: int,
    ) -> None:
        self._native = native
        self._template = template
        self._pieces = pieces
        self._options = options
        self._checkpoints = checkpoints
        self._cut_reach = cut_reach

    def resume(self, request: CountRequest) -> PromptCounts | None:
        assert request.unhashed is not None
        for block, checkpoint in self._checkpoints.deepest(request.prompt.prefix_hashes, request.unhashed):
            counts = self._count_since(request, block, checkpoint)
            if counts is not None:
                return counts
        return None

    def keep(self, request: CountRequest, counted: Tally) -> None:
        """File the checkpoint ``counted`` offers, if any, under the prefix hash of the block it follows."""
        assert request.unhashed is not None
        made = checkpoint_after(request.prompt.blocks, counted, request.unhashed, self._cut_reach)
        if made is not None:
            block, checkpoint = made
            self._checkpoints.keep(request.prompt.prefix_hashes[block], checkpoint)

    def _count_since(self, request: CountRequest, block: int, checkpoint: Checkpoint) -> PromptCounts | None:
        blocks, asked = request.prompt.blocks, request.asked
        if block + 1 < len(blocks) and blocks[block + 1].message == blocks[block].message:
            return None  # the message goes on here: the rendering after it may differ
        earlier = frozenset(asked_block for asked_block in asked if asked_block <= block)
        if not earlier <= checkpoint.counts.keys() | checkpoint.dropped:
            return None
        later = asked - earlier
        try:
            layout = self._native.lay_out(
                request.body,
                blocks,
                self._options.content_join,
                self._template.variables(request.variables),
                since=checkpoint.resumption,
                keep=request.keep,
            )
        except Unsupported:
            return None
        dropped = frozenset(later & layout.dropped | earlier & checkpoint.dropped)
        ends = layout.ends if checkpoint.last_end is None else [checkpoint.last_end, *layout.ends]
        boundaries = prefix_boundaries(ends, later - dropped)
        if any(offset < checkpoint.cut for offset in boundaries.values()):
            return None  # a block with no text of its own right after the checkpoint: its count lies before the cut
        counted = tally(
            self._pieces,
            layout,
            boundaries,
            image_tokens=self._options.image_tokens,
            dropped=dropped,
            text=checkpoint.head + layout.text,
            ends=ends,
            start=checkpoint.cut,
            tokens_before=checkpoint.tokens_before_cut,
            images_before=checkpoint.images,
        )
        counted.cumulative.update((asked_block, checkpoint.counts[asked_block]) for asked_block in earlier - dropped)
        self.keep(request, counted)
        return PromptCounts(
            cumulative=counted.cumulative,
            total=counted.total(self._options.image_tokens),
            dropped=dropped,
            method="resumed",
        )


class CheckpointStore:
    """Checkpoints by the prefix hash of the block they follow: an LRU bounded in bytes, thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CHECKPOINT_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, Checkpoint] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def deepest(
        self, prefix_hashes: Sequence[bytes], unhashed: bytes, limit: int = MAX_TRIED
    ) -> list[tuple[int, Checkpoint]]:
        """The checkpoints after blocks of a prompt, for this ``unhashed`` (``rendering_key``): the
        deepest first, ``limit`` at most.

        More than one: the deepest may be another branch's (a conversation taken back and
        continued differently), whose look-ahead or counts do not fit.
        """
        found: list[tuple[int, Checkpoint]] = []
        entries = self._entries
        with self._lock:
            for block in range(len(prefix_hashes) - 1, -1, -1):
                checkpoint = entries.get(prefix_hashes[block])
                if checkpoint is not None and checkpoint.unhashed == unhashed:
                    entries.move_to_end(prefix_hashes[block])
                    found.append((block, checkpoint))
                    if len(found) == limit:
                        break
        return found

    def keep(self, prefix_hash: bytes, checkpoint: Checkpoint) -> None:
        weight = checkpoint.weight
        if weight > self._max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(prefix_hash, None)
            if previous is not None:
                self._weight -= previous.weight
            self._entries[prefix_hash] = checkpoint
            self._weight += weight
            while self._weight > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._weight -= evicted.weight
