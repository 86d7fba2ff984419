"""The ledger journal's group commit through a running gateway (docs/ledger.md, group commit): with
other requests in flight, a row waits for theirs, so that two streams ending apart share one
synced write; the count of requests in flight is the gateway's own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_CONFIG
from openai import AsyncOpenAI
from prometheus_client import REGISTRY

from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness

GROUPS = "cachegate_ledger_journal_group_rows"


@pytest.fixture(scope="module")
def gateway(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    folder: Path = tmp_path_factory.mktemp("journal-groups")
    # One other request in flight is enough to wait for (the default is five), for as long as a second.
    journal = {"commit_delay_ms": 1000, "commit_siblings": 1}
    config = {**TEST_CONFIG, "ledger": {**TEST_CONFIG["ledger"], "journal": journal}}
    harness = GatewayHarness(qwen3, f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db", config).start()
    yield harness
    harness.stop()


def groups() -> tuple[float, float]:
    """Group commits so far, and the rows they wrote."""
    return REGISTRY.get_sample_value(f"{GROUPS}_count") or 0.0, REGISTRY.get_sample_value(f"{GROUPS}_sum") or 0.0


async def test_a_streams_row_waits_for_the_row_of_a_stream_still_in_flight(gateway: GatewayHarness) -> None:
    client = AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.keys.a, max_retries=0, timeout=30)

    async def stream(chunks: int) -> str:
        answer = await client.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-fake-behavior": f"chunks={chunks},pace=0.05"},
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in answer if chunk.choices])

    before = groups()
    short, long = await asyncio.gather(stream(2), stream(12))  # ending about 0.5 s apart

    assert short and long
    count, rows = groups()
    assert (count - before[0], rows - before[1]) == (1, 2)  # one synced write for both rows
