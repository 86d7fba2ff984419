"""The tokenizer service over the shipped Qwen3 counter, on a loopback port for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachegate.tokenizer_service.app import ServedModel, TokenizerService
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.registry import load_qwen3

from .servers import SERVICE_BODY_LIMIT, BackgroundServer


@pytest.fixture(scope="session")
def qwen3() -> ChatTokenCounter:
    return load_qwen3()


@pytest.fixture(scope="session")
def service_url(qwen3: ChatTokenCounter) -> Iterator[str]:
    """The tokenizer service over the shipped Qwen3 counter, served as ``qwen3``, with a small body limit."""
    service = TokenizerService({"qwen3": ServedModel(qwen3, "qwen3")}, body_limit=SERVICE_BODY_LIMIT)
    with BackgroundServer(service) as server:
        yield server.url
