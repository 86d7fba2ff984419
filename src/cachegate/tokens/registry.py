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
        piece_memo_mb: 64               # memory for tokenized pieces (counts are the same with any)
        checkpoint_mb: 16               # memory for resuming counts of grown conversations (the same)
      gpt-oss:
        kind: tiktoken
        encoding: o200k_harmony         # shipped ranks; or rank_file + pattern + special_tokens
        template_file: /models/gpt-oss/chat_template.jinja
      shared:
        kind: remote
        url: http://tokenizers:8082     # a `cachegate tokenizer serve`
        model: my-model                 # the name that service serves it under

Every option that changes counts is part of the counter's ``tokenizer_version``, hence of the
cache scope: changing one starts a fresh cache instead of mispricing the old one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel, model_validator

from cachegate.tokens.base import TokenCounter, TokenizerLoadError
from cachegate.tokens.counter import DEFAULT_MEMORY, ChatTokenCounter, CounterMemory, CountOptions
from cachegate.tokens.hf import hf_folder, hf_tokenizer, read_text_file
from cachegate.tokens.memo import MemoizedCounter
from cachegate.tokens.pieces import DEFAULT_PIECE_MEMO_BYTES, LoadedTokenizer
from cachegate.tokens.remote import RemoteTokenCounter
from cachegate.tokens.resume import DEFAULT_CHECKPOINT_BYTES
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tiktoken_pieces import TiktokenPieces, custom_encoding, named_encoding

log = logging.getLogger(__name__)


class _CountingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    content_join: str = "\n"
    image_tokens: int = Field(default=0, ge=0)
    template_kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    # Memory for tokenized pieces and for resuming counts (CounterMemory); it changes no count,
    # so it is no part of tokenizer_version.
    piece_memo_mb: int = Field(default=DEFAULT_PIECE_MEMO_BYTES >> 20, ge=0)
    checkpoint_mb: int = Field(default=DEFAULT_CHECKPOINT_BYTES >> 20, ge=0)

    def memory(self) -> CounterMemory:
        return CounterMemory(pieces=self.piece_memo_mb << 20, checkpoints=self.checkpoint_mb << 20)

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

    @property
    def source(self) -> str:
        """Where the tokenizer comes from, as the tokenizer service reports it (``hf_repo``)."""
        return self.name


class HfTokenizerSpec(_CountingOptions):
    """A local Hugging Face model folder; never fetched from a hub."""

    kind: Literal["hf"]
    path: Path
    template_file: Path | None = None

    @property
    def source(self) -> str:
        return str(self.path)


class TiktokenTokenizerSpec(_CountingOptions):
    """A tiktoken encoding — a shipped one by name, or an operator's rank file — and the model's template.

    A rank file has no template variables; ``template_kwargs`` supplies any the template reads
    (``bos_token``, …).
    """

    kind: Literal["tiktoken"]
    template_file: Path
    encoding: Literal["o200k_base", "o200k_harmony"] | None = None
    rank_file: Path | None = None
    rank_file_sha256: str | None = None
    pattern: str | None = None
    special_tokens: dict[str, int] = Field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.encoding or str(self.rank_file)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.encoding is None) == (self.rank_file is None):
            raise ValueError("give either encoding (a shipped one) or rank_file with pattern")
        if self.rank_file is not None and not self.pattern:
            raise ValueError("a rank_file needs its pre-tokenization pattern")
        if self.encoding is not None and (self.pattern or self.special_tokens or self.rank_file_sha256):
            raise ValueError("pattern, special_tokens and rank_file_sha256 go with a rank_file, not a named encoding")
        return self


class RemoteTokenizerSpec(BaseModel):
    """A tokenizer served by a ``cachegate tokenizer serve`` that several gateways share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["remote"]
    url: str
    model: str
    timeout_seconds: float = Field(default=5.0, gt=0)


LocalTokenizerSpec = BuiltinTokenizerSpec | HfTokenizerSpec | TiktokenTokenizerSpec


class TokenizerSpec(
    RootModel[
        Annotated[
            BuiltinTokenizerSpec | HfTokenizerSpec | TiktokenTokenizerSpec | RemoteTokenizerSpec,
            Field(discriminator="kind"),
        ]
    ]
):
    """One configured tokenizer; ``kind`` says which form it takes."""

    model_config = ConfigDict(frozen=True)


def load_counter(spec: TokenizerSpec) -> ChatTokenCounter:
    """Load the tokenizer ``spec`` names, unmemoized (the tokenizer service serves it as is).

    Raises ``TokenizerLoadError`` when its files are missing or invalid.
    """
    choice = spec.root
    if isinstance(choice, RemoteTokenizerSpec):
        raise TokenizerLoadError("a remote tokenizer is opened with open_counter(), not loaded from files")
    options, memory = choice.count_options(), choice.memory()
    if isinstance(choice, BuiltinTokenizerSpec):
        if options == CountOptions() and memory == DEFAULT_MEMORY:
            return load_qwen3()
        return qwen3_counter(options, memory)
    if isinstance(choice, TiktokenTokenizerSpec):
        if choice.encoding is not None:
            pieces = named_encoding(choice.encoding)
        else:
            assert choice.rank_file is not None and choice.pattern is not None  # checked by the spec
            pieces = custom_encoding(
                choice.rank_file, choice.pattern, choice.special_tokens, expected_sha256=choice.rank_file_sha256
            )
        return tiktoken_counter(pieces, read_text_file(choice.template_file), options, memory)
    return hf_counter_from_folder(choice.path, choice.template_file, options, memory)


# The counters of each kind of tokenizer: the tokenizer floor loads files, this builds counters.


def chat_counter(
    loaded: LoadedTokenizer, options: CountOptions | None = None, memory: CounterMemory = DEFAULT_MEMORY
) -> ChatTokenCounter:
    return ChatTokenCounter(loaded.pieces, loaded.chat_template, loaded.special_tokens, options, memory)


def hf_counter(
    tokenizer_json: bytes,
    chat_template: str,
    special_tokens: Mapping[str, Any],
    options: CountOptions | None = None,
    memory: CounterMemory = DEFAULT_MEMORY,
) -> ChatTokenCounter:
    """A counter over a ``tokenizer.json``'s bytes and a chat template."""
    return chat_counter(hf_tokenizer(tokenizer_json, chat_template, special_tokens), options, memory)


def hf_counter_from_folder(
    path: str | Path,
    template_file: str | Path | None = None,
    options: CountOptions | None = None,
    memory: CounterMemory = DEFAULT_MEMORY,
) -> ChatTokenCounter:
    """A counter over a local model folder (``hf.hf_folder`` says which files it reads)."""
    return chat_counter(hf_folder(path, template_file), options, memory)


def tiktoken_counter(
    pieces: TiktokenPieces,
    chat_template: str,
    options: CountOptions | None = None,
    memory: CounterMemory = DEFAULT_MEMORY,
) -> ChatTokenCounter:
    """A counter over a tiktoken encoding and a chat template.

    A rank file carries no template variables (no ``bos_token``); a template that needs one
    takes it from the options' ``template_kwargs``.
    """
    return chat_counter(LoadedTokenizer(pieces, chat_template, {}), options, memory)


@functools.cache
def load_qwen3() -> ChatTokenCounter:
    """The shipped Qwen3 counter with the default options, loaded once per process."""
    return qwen3_counter(CountOptions())


def qwen3_counter(options: CountOptions, memory: CounterMemory = DEFAULT_MEMORY) -> ChatTokenCounter:
    """A Qwen3 counter with other options (the verified files are read only once)."""
    files = qwen3_files()
    return hf_counter(files.tokenizer_json, files.chat_template, files.special_tokens, options, memory)


def build_counter(spec: TokenizerSpec, memo_entries: int = 100_000) -> TokenCounter:
    """Load the tokenizer ``spec`` names, with counts memoized by prefix.

    Raises ``TokenizerLoadError`` when its files are missing or invalid.
    """
    return MemoizedCounter(load_counter(spec), memo_entries)


async def open_counter(spec: TokenizerSpec, memo_entries: int = 100_000) -> TokenCounter:
    """The counter ``spec`` names, memoized; a remote one is asked for its version first.

    Raises ``TokenizerLoadError`` when the files are missing. A tokenizer service that does not
    answer (or not for this model) is no start-up error: the counter is returned unready
    (``CounterNotReady``, its requests degrade) and asks again in the background until it does.
    """
    choice = spec.root
    if isinstance(choice, RemoteTokenizerSpec):
        remote = RemoteTokenCounter(choice.url, choice.model, timeout=choice.timeout_seconds)
        try:
            await remote.open()
        except TokenizerLoadError as exc:
            remote.last_error = str(exc)
            log.warning("%s; serving model %r degraded and retrying in the background", exc, choice.model)
            remote.connect_in_background()
        return MemoizedCounter(remote, memo_entries)
    return build_counter(spec, memo_entries)
