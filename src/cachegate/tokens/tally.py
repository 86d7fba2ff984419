"""From a laid-out prompt to counts: the values every counting method shares (SPEC §5).

A count starts as a ``CountRequest`` (the request and what is worked out from it once) and is
answered by the first method of the chain that takes it — resumed from a checkpoint
(``resume.py``), laid out by a native template (``native/``), or found by marks in a rendering
(``sentinel.py``). Each method yields a ``LaidOutPrompt``; ``tally`` tokenizes it once and reads
the counts at the blocks' boundaries, which ``prefix_boundaries`` places.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import TokenCountError
from cachegate.tokens.native import LaidOutPrompt
from cachegate.tokens.pieces import PieceCounter, PieceCounts
from cachegate.tokens.template import rendering_key


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
class CountRequest:
    """One count's inputs, worked out once and handed down the chain of methods."""

    body: Mapping[str, Any]
    prompt: ParsedPrompt
    asked: frozenset[int]
    """The blocks whose cumulative counts are wanted."""
    variables: Mapping[str, Any] | None
    """The request's own template variables (``chat_template_kwargs``)."""
    keep: int | None
    """The request's last message: where a count offers the next request of it to resume."""
    unhashed: bytes | None
    """What the rendering depends on that no prefix hash covers (``rendering_key``), when resuming."""

    @classmethod
    def of(
        cls, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int], *, resumable: bool
    ) -> CountRequest:
        asked = frozenset(blocks)
        if any(not 0 <= block < len(prompt.blocks) for block in asked):
            raise TokenCountError("an asked-for block is not in the prompt")
        variables = body.get("chat_template_kwargs")
        messages = body.get("messages")
        return cls(
            body=body,
            prompt=prompt,
            asked=asked,
            variables=variables if isinstance(variables, Mapping) else None,
            keep=len(messages) - 1 if isinstance(messages, list) and messages else None,
            unhashed=rendering_key(body) if resumable else None,
        )


@dataclass(frozen=True, slots=True)
class Tally:
    """A rendering counted: what a count answers, and what a checkpoint is cut from (``resume.py``)."""

    layout: LaidOutPrompt
    text: str
    """What was tokenized: the rendering from ``counted.starts[0]`` on."""
    counted: PieceCounts
    ends: Sequence[tuple[int, int]]
    """Every block end known, (block, offset) in text order, those before ``text`` included."""
    cumulative: dict[int, int]
    """Block -> tokens up to its boundary, images included, for the asked-for blocks."""
    dropped: frozenset[int]
    """Asked-for blocks whose text the template leaves out."""
    images_before: int
    """Image blocks ahead of ``layout``'s text."""

    def total(self, image_tokens: int) -> int:
        return self.counted.total + image_tokens * (self.images_before + len(self.layout.images))


def tally(
    pieces: PieceCounter,
    layout: LaidOutPrompt,
    boundaries: dict[int, int],
    *,
    image_tokens: int,
    dropped: frozenset[int],
    text: str | None = None,
    ends: Sequence[tuple[int, int]] | None = None,
    start: int = 0,
    tokens_before: int = 0,
    images_before: int = 0,
) -> Tally:
    """Tokenize ``text`` (default: the layout's) once, from ``start``, and read the count at each boundary.

    ``start``, ``tokens_before``, ``images_before`` and a longer ``text`` and ``ends`` are a
    resumed count's: what its checkpoint knows of the rendering before the layout.
    """
    text = layout.text if text is None else text
    try:
        counted = pieces.count_from(text, set(boundaries.values()), start, tokens_before)
    except Exception as exc:
        raise TokenCountError(f"tokenization failed: {type(exc).__name__}") from exc
    at_offset, images = counted.at_offset, layout.images
    cumulative = {
        # An image costs at every boundary after it.
        block: at_offset[offset] + image_tokens * (images_before + bisect.bisect_right(images, block))
        for block, offset in boundaries.items()
    }
    return Tally(layout, text, counted, layout.ends if ends is None else ends, cumulative, dropped, images_before)


def prefix_boundaries(found: Sequence[tuple[int, int]], asked: set[int] | frozenset[int]) -> dict[int, int]:
    """The boundary of each asked-for block b: the furthest end of a block ≤ b's text that
    precedes the text of every block > b (SPEC §5; the ``counter.py`` docstring says why).

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
