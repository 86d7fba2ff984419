"""The tokenizer service's HTTP contract (SPEC §5): the messages both its sides read and write.

The service (``cachegate.tokenizer_service``) answers them; the remote counter (``remote.py``)
asks them. They live here, below both, so neither side imports the other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class WireMessage(BaseModel):
    """A message of the service's HTTP contract: types are checked, never coerced; unknown fields
    are ignored, so either side may add one without breaking the other."""

    model_config = ConfigDict(strict=True, frozen=True)


class ServedModelInfo(WireMessage):
    alias: str
    hf_repo: str
    tokenizer_version: str


class ModelsAnswer(WireMessage):
    models: list[ServedModelInfo]


class TokenizeRequest(WireMessage):
    virtual_model: str
    segments: list[str]


class TokenizeAnswer(WireMessage):
    virtual_model: str
    tokenizer_version: str
    segment_counts: list[int]
    cumulative: list[int]
    total: int


class BlockToCount(WireMessage):
    block: int = Field(ge=0)
    prefix_hash: str  # hex of the gateway's prefix hash after ``block`` (SPEC §4)


class RenderRequest(WireMessage):
    virtual_model: str
    request: dict[str, Any]
    blocks: list[BlockToCount] | None = None


class BlockCount(WireMessage):
    block: int = Field(ge=0)
    cumulative: int = Field(ge=0)


class RenderAnswer(WireMessage):
    virtual_model: str
    tokenizer_version: str
    total: int | None = Field(ge=0)  # None as in ``PromptCounts.total``: answered from memory
    breakpoints: list[BlockCount]
    dropped: list[int] = Field(default_factory=list)  # asked-for blocks the template leaves out: no count
