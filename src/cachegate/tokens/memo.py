"""Memoized counts: a prefix already counted is not rendered and tokenized again (SPEC §5).

The cumulative count at a block is memoized under ``(tokenizer_version, rendering_key,
prefix_hash)``: equal prefix hashes mean equal prefixes, the version pins the tokenizer, the
template and the counting options, and what no prefix hash covers may change how a template
renders the prefix — the request's own ``chat_template_kwargs`` (``enable_thinking``, a date),
an empty tools list (Llama 3.1) — so a remembered count is the count the inner counter would
give again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cachetools import LRUCache

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts, TextCounter, TokenCounter, TokenCountError
from cachegate.tokens.template import rendering_key


class MemoizedCounter:
    """A ``TokenCounter`` that answers from memory when every asked-for prefix is known.

    Then ``total`` is None: the rest of the prompt was not counted. When any asked-for block is
    new, or no block is asked for (the caller wants the total), the inner counter counts the
    whole request and every asked-for count is remembered. The memory is a bounded LRU.
    Not thread-safe: it is used from the event loop only.
    """

    def __init__(self, inner: TokenCounter, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._inner = inner
        self._memory: LRUCache[tuple[str, bytes, bytes], int] = LRUCache(max_entries)

    @property
    def tokenizer_version(self) -> str:
        return self._inner.tokenizer_version

    @property
    def template_variables(self) -> frozenset[str]:
        return self._inner.template_variables

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        if any(not 0 <= block < len(prompt.prefix_hashes) for block in blocks):
            raise TokenCountError("an asked-for block is not in the prompt")
        unhashed = rendering_key(body)
        if unhashed is None:  # variables with no canonical form: count, and remember nothing
            return await self._inner.count(body, prompt, blocks)
        version = self._inner.tokenizer_version
        keys = {block: (version, unhashed, prompt.prefix_hashes[block]) for block in blocks}
        memory = self._memory
        known = {block: count for block, key in keys.items() if (count := memory.get(key)) is not None}
        if keys and len(known) == len(keys):  # every get above counted as a use
            return PromptCounts(cumulative=known, total=None, method="memory", tokenizer_version=version)
        counts = await self._inner.count(body, prompt, blocks)
        if counts.tokenizer_version not in (None, version):
            return counts  # the version changed while counting: remember nothing under the old one
        for block, key in keys.items():
            if block in counts.cumulative:  # a dropped block is counted again: whether it is depends on the rest
                self._memory[key] = counts.cumulative[block]
        return counts

    async def count_texts(self, texts: Sequence[str]) -> list[int]:
        """The inner counter's plain-text counts (``TextCounter``), never memoized: texts have no prefix hash."""
        if not isinstance(self._inner, TextCounter):
            raise TokenCountError("this counter cannot count plain texts")
        return await self._inner.count_texts(texts)

    async def aclose(self) -> None:
        await self._inner.aclose()
