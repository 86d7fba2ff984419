"""The token counter port (SPEC §5): counts taken from the model's real chat template."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from cachegate.core.errors import CachegateError
from cachegate.core.types import ParsedPrompt


class TokenizerLoadError(CachegateError):
    """A tokenizer or its chat template could not be loaded; the message says which file and why."""


class TokenCountError(CachegateError):
    """The count could not be taken (template refused the request, service down, …); callers degrade."""


class CounterNotReady(TokenCountError):
    """The counter does not know its ``tokenizer_version`` yet (a tokenizer service not reached since
    start): there is no cache scope to classify in, so the request is served degraded."""


@dataclass(frozen=True, slots=True)
class PromptCounts:
    """Cumulative token counts at the end of the asked-for blocks, and the whole rendering's count.

    ``total`` is None when the counts were answered from memory without rendering the request
    (a memoized prefix says nothing about the rest of the prompt). An asked-for block whose text
    the template leaves out has no count: it is in ``dropped``, and a breakpoint there caches
    nothing (a match there is stale), for its text is not in the prompt the upstream reads.
    """

    cumulative: Mapping[int, int]  # block index -> tokens that end at or before the end of that block
    total: int | None
    dropped: frozenset[int] = frozenset()
    method: CountMethod = field(default="other", compare=False)
    """How they were taken, for the operators' metric; two counts are equal whatever their methods."""
    tokenizer_version: str | None = field(default=None, compare=False)
    """The version that took them, when it can change at run time (a tokenizer service): counts of
    another version than the request's scope must not be filed under that scope."""


CountMethod = Literal["memory", "resumed", "layout", "sentinel", "remote", "other"]
"""``memory``: answered by the count memo; ``resumed``: laid out and counted from a checkpoint of
the conversation on; ``layout``: laid out by a native template from the start; ``sentinel``:
rendered with marks; ``remote``: by a tokenizer service."""


@runtime_checkable
class TokenCounter(Protocol):
    @property
    def tokenizer_version(self) -> str:
        """Identifies the tokenizer file, the template and the options that change counts.

        Raises ``CounterNotReady`` while it is not known yet (a remote counter not reached since start)."""

    @property
    def template_variables(self) -> frozenset[str]:
        """The variables the chat template reads besides the conversation (``enable_thinking``,
        ``reasoning_effort``, …): the switches a request may set. Empty when unknown."""

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        """Count ``body`` (the client's chat request; markers are ignored) at each of ``blocks``
        (each has a count, or is ``dropped``)."""

    async def aclose(self) -> None: ...


@runtime_checkable
class TextCounter(Protocol):
    """A counter that can also count plain texts (no chat template, no special tokens).

    Optional beside ``TokenCounter``: the routes that take raw text (``/v1/completions``,
    ``/v1/embeddings``) use it to bill a prompt whose upstream answered without usage.
    """

    async def count_texts(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text alone; raises ``TokenCountError`` when it cannot."""
