"""Token counters from configuration.

A model names a tokenizer; a tokenizer is either the shipped one or a local Hugging Face
model folder (the general case: the operator's own model)::

    tokenizers:
      qwen3: {kind: builtin, name: qwen3}
      my-model:
        kind: hf
        path: /models/my-model          # tokenizer.json, tokenizer_config.json, chat_template.jinja
        template_file: null             # optional override of the folder's chat template
        content_join: "\\n"              # how the upstream joins multi-part text (vLLM: "\\n")
        image_tokens: 0                 # what one image costs upstream
        template_kwargs: {}             # e.g. {enable_thinking: false}, as the upstream renders

Every option that changes counts is part of the counter's ``tokenizer_version``, hence of the
cache scope: changing one starts a fresh cache instead of mispricing the old one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from cachegate.tokens.base import TokenCounter
from cachegate.tokens.hf import CountOptions, HfTokenCounter
from cachegate.tokens.memo import MemoizedCounter
from cachegate.tokens.shipped import load_qwen3, qwen3_counter


class _CountingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    content_join: str = "\n"
    image_tokens: int = Field(default=0, ge=0)
    template_kwargs: dict[str, JsonValue] = Field(default_factory=dict)

    def count_options(self) -> CountOptions:
        return CountOptions(
            content_join=self.content_join,
            image_tokens=self.image_tokens,
            template_kwargs=dict(self.template_kwargs),
        )


class BuiltinTokenizerSpec(_CountingOptions):
    """A tokenizer shipped with cachegate."""

    kind: Literal["builtin"]
    name: Literal["qwen3"]


class HfTokenizerSpec(_CountingOptions):
    """A local Hugging Face model folder; never fetched from a hub."""

    kind: Literal["hf"]
    path: Path
    template_file: Path | None = None


class TokenizerSpec(RootModel[Annotated[BuiltinTokenizerSpec | HfTokenizerSpec, Field(discriminator="kind")]]):
    """One configured tokenizer; ``kind`` says which form it takes."""

    model_config = ConfigDict(frozen=True)


def load_counter(spec: TokenizerSpec) -> HfTokenCounter:
    """Load the tokenizer ``spec`` names, unmemoized (the tokenizer service serves it as is).

    Raises ``TokenizerLoadError`` when its files are missing or invalid.
    """
    choice = spec.root
    options = choice.count_options()
    if isinstance(choice, BuiltinTokenizerSpec):
        return load_qwen3() if options == CountOptions() else qwen3_counter(options)
    return HfTokenCounter.from_folder(choice.path, choice.template_file, options)


def build_counter(spec: TokenizerSpec, memo_entries: int = 100_000) -> TokenCounter:
    """Load the tokenizer ``spec`` names, with counts memoized by prefix.

    Raises ``TokenizerLoadError`` when its files are missing or invalid.
    """
    return MemoizedCounter(load_counter(spec), memo_entries)
