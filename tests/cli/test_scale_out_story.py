"""Issue 13's done-when, as a new user would set it up: three ``cachegate serve`` processes on one
PostgreSQL control store and one Redis cache index, in front of four upstream replicas of one model
(fake upstreams, each with its own prefix KV cache). Several tenants' agent conversations go turn by
turn, every request to the next gateway in turn (a load balancer's round robin). Every cache read a
gateway bills must land on the replica that holds the prefix: the replica's own ``cached_tokens``
(the ledger's ``upstream_cached_tokens``) cover the billed read, down to the engine's 16-token blocks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openai import OpenAI

from cachegate.fake_prefix_cache import BLOCK_TOKENS

from .demo_server import free_port
from .gateway_process import Running, create_key
from pg import PgServer
from redis_server import RedisServer

GATEWAYS = 3
REPLICAS = 4
TENANTS = 3
CONVERSATIONS = 3  # per tenant
TURNS = 4
FLOOR = 256


def config(work: Path, replica_ports: list[int], store_url: str, index_url: str) -> Path:
    endpoints = "\n".join(
        f'  - {{name: replica-{n}, base_url: "http://127.0.0.1:{port}/v1"}}' for n, port in enumerate(replica_ports)
    )
    names = ", ".join(f"replica-{n}" for n in range(len(replica_ports)))
    path = work / "cachegate.yaml"
    path.write_text(
        f"""
data_dir: {work / "data"}
control_store_url: "{store_url}"
cache_index_url: "{index_url}"
ledger: {{flush_interval_seconds: 0.1}}
endpoints:
{endpoints}
models:
  - alias: agent
    endpoints: [{names}]
    upstream_model: m
    tokenizer: qwen3
    cache: {{min_prefix_tokens: {FLOOR}}}
"""
    )
    return path


def system_prompt(tenant: int) -> list[dict[str, Any]]:
    tools = " ".join(f"Tool t{tenant}_{i}(path, mode) edits a file of tenant {tenant}." for i in range(60))
    return [
        {"type": "text", "text": f"You are tenant {tenant}'s agent. {tools}", "cache_control": {"type": "ephemeral"}}
    ]


def turn(conversation: list[dict[str, Any]], tenant: int, thread: int, number: int) -> list[dict[str, Any]]:
    """The conversation's next request: the last user message marked (5m), earlier marks dropped."""
    for message in conversation:
        if message["role"] == "user" and isinstance(message["content"], list):
            message["content"] = message["content"][0]["text"]
    text = f"Tenant {tenant}, thread {thread}, step {number}: run the tests of module {number} and report. " * 8
    conversation.append(
        {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}
    )
    return conversation


@pytest.fixture
def story(tmp_path: Path, pg_server: PgServer, redis_server: RedisServer) -> Iterator[tuple[list[str], str, Path]]:
    store_url = pg_server.create_database()
    prefix = redis_server.fresh_prefix()
    replica_ports = [free_port() for _ in range(REPLICAS)]
    gateway_ports = [free_port() for _ in range(GATEWAYS)]
    configs = []
    for n in range(GATEWAYS):
        folder = tmp_path / f"gateway-{n}"
        folder.mkdir()
        configs.append(config(folder, replica_ports, store_url, redis_server.index_url(prefix)))
    with ExitStack() as stack:
        replicas = [
            Running("-c", str(configs[0]), "fake-upstream", "--port", str(port), "--kv-cache-blocks", "100000")
            for port in replica_ports
        ]
        for replica in replicas:
            stack.callback(replica.stop)
        gateways = [
            Running("-c", str(c), "serve", "--port", str(p)) for c, p in zip(configs, gateway_ports, strict=True)
        ]
        for gateway in gateways:
            stack.callback(gateway.stop)
        for replica in replicas:
            replica.wait_for("fake upstream listening")
        for gateway in gateways:
            gateway.wait_for("Application startup complete")
        yield [f"http://127.0.0.1:{port}/v1" for port in gateway_ports], store_url, configs[0]
    redis_server.drop(prefix)


async def ledger_rows(store_url: str, expected: int) -> list[asyncpg.Record]:
    """The chat rows of the shared ledger, once the gateways' flushes (every 0.1 s) have brought ``expected``."""
    connection = await asyncpg.connect(store_url)
    try:
        for _ in range(100):
            rows = await connection.fetch(
                "SELECT principal_id, status, cache_read_tokens, upstream_cached_tokens"
                " FROM ledger WHERE route = 'chat'"
            )
            if len(rows) >= expected:
                break
            await asyncio.sleep(0.1)
        return rows
    finally:
        await connection.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_every_billed_read_lands_on_the_replica_that_holds_the_prefix(story: tuple[list[str], str, Path]) -> None:
    gateway_urls, store_url, config_path = story
    keys = [create_key(config_path, f"tenant-{tenant}") for tenant in range(TENANTS)]
    gateways = itertools.cycle(range(GATEWAYS))
    conversations = {
        (tenant, thread): [{"role": "system", "content": system_prompt(tenant)}]
        for tenant in range(TENANTS)
        for thread in range(CONVERSATIONS)
    }
    sent = 0
    for number in range(TURNS):
        for (tenant, thread), conversation in conversations.items():
            client = OpenAI(base_url=gateway_urls[next(gateways)], api_key=keys[tenant], max_retries=0)
            answer = client.chat.completions.create(model="agent", messages=turn(conversation, tenant, thread, number))  # type: ignore[arg-type]
            conversation.append({"role": "assistant", "content": answer.choices[0].message.content or ""})
            sent += 1

    rows = asyncio.run(ledger_rows(store_url, sent))
    assert len(rows) == sent and all(row["status"] == 200 for row in rows)
    reads = [row for row in rows if row["cache_read_tokens"] > 0]
    # Every conversation after its first turn reads; each tenant's later conversations read its system prompt.
    assert len(reads) >= TENANTS * CONVERSATIONS * (TURNS - 1)
    for row in reads:
        held = row["upstream_cached_tokens"] or 0
        assert held >= row["cache_read_tokens"] // BLOCK_TOKENS * BLOCK_TOKENS, (
            f"{row['principal_id']}: billed a read of {row['cache_read_tokens']} tokens, the replica held {held}"
        )
