"""The fake upstream's prefix KV cache: what one engine replica would find already computed.

vLLM's automatic prefix caching keeps the KV of full blocks of 16 prompt tokens, each
identified by its tokens and every token before it, and evicts the least recently used blocks
when memory runs out; a prompt's hit is its longest run of cached blocks from the start, in
whole blocks, reported as ``usage.prompt_tokens_details.cached_tokens``. This models that
without token ids: a token block is named by the chat block holding its last token — that
block's prefix hash (SPEC §4) and cumulative count, which fix every token up to there — and
its position. So two prompts share exactly the token blocks that lie within their common chat
blocks, a slight underestimate of an engine (which would also share the tokens of a chat block
that differs only after them, and the generated answer's blocks). ``cache_salt`` (vLLM's
isolation, SPEC §12) is part of every name.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

_BlockName = tuple[str | None, bytes, int, int]
"""A token block: the salt, the prefix hash and count of the chat block holding its end, its position."""

BLOCK_TOKENS = 16
"""vLLM's default ``--block-size``."""


class PrefixKvCache:
    """One replica's cache of at most ``capacity`` token blocks, least recently used evicted first."""

    def __init__(self, capacity: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if capacity <= 0 or block_tokens <= 0:
            raise ValueError("the capacity and the block size must be positive")
        self._capacity = capacity
        self._block_tokens = block_tokens
        self._blocks: OrderedDict[_BlockName, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def serve(self, boundaries: Sequence[tuple[bytes, int]], salt: str | None = None) -> int:
        """Run a prompt through the cache: returns the tokens it found computed (whole blocks from
        the start), and keeps the prompt's blocks as the most recently used.

        ``boundaries`` are the prompt's chat blocks in order: each one's prefix hash and the
        tokens up to its end. Tokens past the last boundary (the generation prompt) are never
        kept, so a hit is always shorter than the prompt, as an engine computes at least one token.
        """
        names = list(self._names(boundaries, salt))
        cached = 0
        for name in names:
            if name not in self._blocks:
                break
            cached += self._block_tokens
        for name in names:
            self._blocks[name] = None
            self._blocks.move_to_end(name)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)
        return cached

    def _names(
        self, boundaries: Sequence[tuple[bytes, int]], salt: str | None
    ) -> list[tuple[str | None, bytes, int, int]]:
        names = []
        block = 0
        for prefix_hash, cumulative in boundaries:
            while (block + 1) * self._block_tokens <= cumulative:
                names.append((salt, prefix_hash, cumulative, block))
                block += 1
        return names
