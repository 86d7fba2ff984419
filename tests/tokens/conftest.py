"""Shared fixtures: the shipped Qwen3 counter, its raw tokenizer, and the gateway's parse of a request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from tokenizers import Tokenizer

from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import ParsedPrompt
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.registry import load_qwen3
from cachegate.tokens.shipped import qwen3_files


@pytest.fixture(scope="session")
def qwen3() -> ChatTokenCounter:
    return load_qwen3()


@pytest.fixture(scope="session")
def qwen3_tokenizer() -> Tokenizer:
    """An independent instance of the shipped tokenizer, for expected counts."""
    return Tokenizer.from_buffer(qwen3_files().tokenizer_json)


@pytest.fixture(scope="session")
def prompt_of() -> Callable[[Mapping[str, Any]], ParsedPrompt]:
    """The gateway's own parse of a request: its blocks, prefix hashes and breakpoints."""
    policy = TtlPolicy.default_policy()
    return lambda body: parse_prompt(body, policy)
