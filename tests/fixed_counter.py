"""A token counter for tests of the fake upstream itself: every prompt counts ``PROMPT_TOKENS``, no tokenizer loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts

PROMPT_TOKENS = 42


class FixedCounter:
    tokenizer_version = "fixed"
    template_variables: frozenset[str] = frozenset()

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        return PromptCounts(cumulative={}, total=PROMPT_TOKENS)

    async def aclose(self) -> None:
        pass
