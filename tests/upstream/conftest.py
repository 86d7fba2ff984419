"""Fixtures of the upstream adapter suites: each adapter in turn, on each event loop, and the
project's fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvloop

from cachegate.fake_upstream import start_fake_upstream
from cachegate.upstream.base import Upstream
from cachegate.upstream.httptools_client import HttptoolsUpstream

from fixed_counter import FixedCounter

MakeUpstream = Callable[..., Upstream]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every test on asyncio's loop and on uvloop, the one uvicorn runs the gateway on: their
    transports differ in the details the adapters rely on (flow control, EOF, close and abort)."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    """Builds the adapter under test with the given timeouts; every one built is closed afterwards.

    One adapter today; a second one would make this fixture parametrized, and the suite its contract.
    """
    made: list[Upstream] = []

    def make(*, connect_timeout: float = 10.0, read_timeout: float = 600.0) -> Upstream:
        upstream: Upstream = HttptoolsUpstream(connect_timeout=connect_timeout, read_timeout=read_timeout)
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        await upstream.aclose()


@pytest.fixture
def upstream(make_upstream: MakeUpstream) -> Upstream:
    return make_upstream()


@pytest.fixture
async def fake_upstream_url() -> AsyncIterator[str]:
    """The base URL (…/v1) of the project's fake OpenAI-compatible upstream."""
    runner, port = await start_fake_upstream(FixedCounter(), "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()
