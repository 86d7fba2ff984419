"""Several endpoints per model (SPEC §15), through a running gateway in front of four fake replicas,
each with its own prefix KV cache: prefix affinity, and the fallbacks when an endpoint is down or busy."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic import Anthropic
from conftest import TEST_CONFIG
from openai import AsyncOpenAI, OpenAI

from cachegate.core.affinity import affinity_key, rendezvous_order
from cachegate.tokens.base import TokenCounter

from harness import GatewayHarness

REPLICAS = [f"replica-{i}" for i in range(4)]
SYSTEM = "You are the build agent of the affinity suite. " * 30  # past the models' 64-token floor
MODEL = {"upstream_model": "qwen3-fake", "cache": {"min_prefix_tokens": 64}}


@pytest.fixture(scope="module")
def replicated(qwen3: TokenCounter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    folder: Path = tmp_path_factory.mktemp("affinity")
    config = {
        **TEST_CONFIG,
        # Busy past one request in flight: the tests here send one at a time but for the busy one.
        "routing": {"max_in_flight": 1, "down_seconds": 30},
        "models": [
            {"alias": "replicated", "endpoints": REPLICAS, **MODEL},
            {"alias": "half-dead", "endpoints": ["dead", *REPLICAS[:2]], **MODEL},
            {"alias": "busy", "endpoints": REPLICAS, **MODEL},
        ],
    }
    store_url, index_url = f"sqlite:///{folder}/control.db", f"sqlite:///{folder}/index.db"
    harness = GatewayHarness(qwen3, store_url, index_url, config, replicas=len(REPLICAS)).start()
    yield harness
    harness.stop()


def client(gateway: GatewayHarness, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def served(gateway: GatewayHarness) -> list[dict[str, int]]:
    """Each replica's counts (chat requests, prompt and cached tokens), in replica order."""
    stats = []
    for url in gateway.replica_urls:
        try:
            with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as response:
                stats.append(json.loads(response.read()))
        except OSError:  # a replica the test stopped
            stats.append({"chat_requests": 0, "prompt_tokens": 0, "cached_tokens": 0})
    return stats


def which_replica(gateway: GatewayHarness, before: list[dict[str, int]]) -> str:
    """The one replica that served a chat request since ``before``."""
    after = served(gateway)
    grown = [REPLICAS[i] for i in range(len(REPLICAS)) if after[i]["chat_requests"] > before[i]["chat_requests"]]
    assert len(grown) == 1, grown
    return grown[0]


def turn_messages(opening: str, turns: int) -> list[dict[str, Any]]:
    """A conversation after ``turns`` user turns, its last turn marked, as an agent sends it."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        text = opening if turn == 0 else f"Turn {turn}: now run the next step of the plan and report back."
        messages.append({"role": "user", "content": text})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"Step {turn} is done; the build is green again."})
    last = messages[-1]
    last["content"] = [{"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}]
    return messages


def home(principal: str, model: str, messages: list[dict[str, Any]], endpoints: list[str]) -> list[str]:
    return rendezvous_order(affinity_key(principal, model, {"model": model, "messages": messages}), endpoints)


def test_a_growing_conversation_stays_on_one_replica_whose_cache_it_reads(replicated: GatewayHarness) -> None:
    sdk = client(replicated, replicated.keys.a)
    opening = "Fix the flaky test in the scheduler module."
    chosen = []
    for turns in range(1, 7):
        messages = turn_messages(opening, turns)
        before = served(replicated)
        sdk.chat.completions.create(model="replicated", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        chosen.append(which_replica(replicated, before))

    expected = home(replicated.keys.principal_a, "replicated", turn_messages(opening, 1), REPLICAS)[0]
    assert chosen == [expected] * 6
    rows = [row for row in replicated.ledger_rows("chat") if row.model == "replicated"][-6:]
    assert rows[0].cache_read_tokens == 0 and rows[0].upstream_cached_tokens == 0
    for row in rows[1:]:  # every later turn reads the turn before, and the replica holds it
        assert row.cache_read_tokens > 0
        assert row.cache_read_tokens - 16 < row.upstream_cached_tokens <= row.cache_read_tokens  # whole blocks


def test_an_anthropic_conversation_stays_on_one_replica_too(replicated: GatewayHarness) -> None:
    sdk = Anthropic(base_url=replicated.base_url, api_key=replicated.keys.b, max_retries=0, timeout=30)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages: list[dict[str, Any]] = []
    chosen, reads = [], []
    for turn in range(4):
        text = "Summarise the incident report." if turn == 0 else f"Turn {turn}: and what follows from it?"
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}
        )
        before = served(replicated)
        answer = sdk.messages.create(model="replicated", system=system, messages=messages, max_tokens=4)  # type: ignore[arg-type]
        chosen.append(which_replica(replicated, before))
        reads.append(answer.usage.cache_read_input_tokens)
        messages[-1]["content"][0].pop("cache_control")
        messages.append({"role": "assistant", "content": answer.content[0].text})  # type: ignore[union-attr]

    assert len(set(chosen)) == 1
    assert all(read for read in reads[1:])  # each later turn read the one before, on that replica
    rows = [row for row in replicated.ledger_rows("messages") if row.model == "replicated"][-3:]
    assert all(row.upstream_cached_tokens and row.upstream_cached_tokens > row.cache_read_tokens - 16 for row in rows)


def test_two_tenants_with_equal_prompts_are_routed_each_by_its_own_scope(replicated: GatewayHarness) -> None:
    keys = {replicated.keys.principal_a: replicated.keys.a, replicated.keys.principal_b: replicated.keys.b}
    homes: dict[str, list[str]] = {principal: [] for principal in keys}
    for opening in range(8):
        messages = turn_messages(f"Tenant-neutral question number {opening}.", 1)
        for principal, key in keys.items():
            before = served(replicated)
            client(replicated, key).chat.completions.create(model="replicated", messages=messages, max_tokens=4)  # type: ignore[arg-type]
            chosen = which_replica(replicated, before)
            assert chosen == home(principal, "replicated", messages, REPLICAS)[0]
            homes[principal].append(chosen)

    a, b = homes.values()
    assert a != b  # equal prompts, other scopes: not sent together (all 8 alike by chance: 4^-8)


def test_an_endpoint_that_refuses_passes_the_request_to_the_next(replicated: GatewayHarness) -> None:
    endpoints = ["dead", *REPLICAS[:2]]
    principal = replicated.keys.principal_a
    opening = next(
        f"Deploy service {i}."
        for i in range(200)
        if home(principal, "half-dead", turn_messages(f"Deploy service {i}.", 1), endpoints)[0] == "dead"
    )
    order = home(principal, "half-dead", turn_messages(opening, 1), endpoints)
    sdk = client(replicated, replicated.keys.a)
    passed_on = metric(replicated, 'cachegate_endpoint_passed_on_total{reason="refused"}')
    skipped = metric(replicated, 'cachegate_endpoint_passed_on_total{reason="down"}')
    took = metric(replicated, f'cachegate_endpoint_requests_total{{endpoint="{order[1]}"}}')

    for turns in (1, 2):
        before = served(replicated)
        answer = sdk.chat.completions.create(model="half-dead", messages=turn_messages(opening, turns), max_tokens=4)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        assert which_replica(replicated, before) == order[1]

    # The first request found it refusing; the second did not try it (the breaker is open).
    assert metric(replicated, 'cachegate_endpoint_passed_on_total{reason="refused"}') == passed_on + 1
    assert metric(replicated, 'cachegate_endpoint_passed_on_total{reason="down"}') == skipped + 1
    assert metric(replicated, f'cachegate_endpoint_requests_total{{endpoint="{order[1]}"}}') == took + 2


def test_an_overloaded_endpoint_passes_the_request_to_the_next(replicated: GatewayHarness) -> None:
    principal = replicated.keys.principal_a
    messages = turn_messages("Profile the slow endpoint.", 1)
    order = home(principal, "busy", messages, REPLICAS)

    async def scenario() -> None:
        sdk = AsyncOpenAI(base_url=f"{replicated.base_url}/v1", api_key=replicated.keys.a, max_retries=0, timeout=30)
        stalled = {"x-fake-behavior": "stall=2"}
        slow = [
            asyncio.create_task(
                sdk.chat.completions.create(model="busy", messages=messages, max_tokens=4, extra_headers=stalled)  # type: ignore[arg-type]
            )
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)  # both are in flight on the home replica: more than max_in_flight (1)
        before = served(replicated)
        await sdk.chat.completions.create(model="busy", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        assert which_replica(replicated, before) == order[1]
        await asyncio.gather(*slow)
        before = served(replicated)
        await sdk.chat.completions.create(model="busy", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        assert which_replica(replicated, before) == order[0]  # not busy any more: back home
        await sdk.close()

    asyncio.run(scenario())


def test_a_replica_that_goes_down_hands_its_conversations_to_the_next(replicated: GatewayHarness) -> None:
    principal = replicated.keys.principal_b
    opening = "Migrate the billing tables."
    order = home(principal, "replicated", turn_messages(opening, 1), REPLICAS)
    sdk = client(replicated, replicated.keys.b)
    sdk.chat.completions.create(model="replicated", messages=turn_messages(opening, 1), max_tokens=4)  # type: ignore[arg-type]

    replicated.stop_replica(REPLICAS.index(order[0]))
    before = served(replicated)
    answer = sdk.chat.completions.create(model="replicated", messages=turn_messages(opening, 2), max_tokens=4)  # type: ignore[arg-type]

    assert answer.choices[0].message.content
    assert which_replica(replicated, before) == order[1]


def metric(gateway: GatewayHarness, name: str) -> float:
    scrape = urllib.request.Request(
        f"{gateway.base_url}/metrics", headers={"authorization": f"Bearer {gateway.keys.admin}"}
    )
    with urllib.request.urlopen(scrape) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split(" ")[1])
    return 0.0
