"""Tokenizing a long rendering on every core, exactly, without holding the GIL.

``tokenizers`` holds the GIL while it encodes one text: a long prompt would use one core and
stall the event loop meanwhile. ``encode_batch`` releases it and encodes its texts in parallel.
A tokenizer splits its input at its added tokens (``<|im_start|>``, ``<think>`` …) before
normalizing, pre-tokenizing or merging anything, so a rendering cut just before each added token
gives pieces that encode to exactly the tokens of the whole — and a rendered chat has such a cut
at every message. A tokenizer whose added tokens reach into their neighbours (``lstrip``,
``rstrip``, ``single_word``) or are matched after normalization is never cut.
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer

Offsets = list[tuple[int, int]]

MIN_CHARS_TO_SPLIT = 16_384
"""Below this a single encode is cheaper than cutting and batching (measured: ~3,000 tokens)."""


class PieceEncoder:
    def __init__(self, tokenizer: Tokenizer, min_chars: int = MIN_CHARS_TO_SPLIT) -> None:
        self._tokenizer = tokenizer
        self._min_chars = min_chars
        added = tokenizer.get_added_tokens_decoder().values()
        cuttable = bool(added) and not any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added)
        contents = sorted({token.content for token in added}, key=len, reverse=True)
        self._cuts = re.compile("|".join(map(re.escape, contents))) if cuttable else None

    def offsets(self, text: str) -> Offsets:
        """The character offsets of ``text``'s tokens (no special tokens added), as one encode gives them."""
        if self._cuts is None or len(text) < self._min_chars:
            return self._tokenizer.encode(text, add_special_tokens=False).offsets
        starts = sorted({0, *(match.start() for match in self._cuts.finditer(text))})
        ends = [*starts[1:], len(text)]
        pieces = [text[start:end] for start, end in zip(starts, ends, strict=True)]
        offsets: Offsets = []
        for start, encoding in zip(starts, self._tokenizer.encode_batch(pieces, add_special_tokens=False), strict=True):
            offsets.extend((first + start, last + start) for first, last in encoding.offsets)
        return offsets
